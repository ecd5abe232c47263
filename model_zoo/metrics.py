"""Scores used in model cards, benchmarks and tests: exact and Cell-Ontology-level accuracy, macro-F1,
expected calibration error."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

from model_zoo.ontology import term_lineage as _lineage


def ontology_match(predicted: str, truth: str) -> bool:
    """A prediction is right when it is the truth's term, or an ancestor or a descendant of it."""
    if not predicted or not truth:
        return False
    return predicted in _lineage(truth) or truth in _lineage(predicted)


def ontology_accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([ontology_match(str(p), str(t)) for p, t in zip(predicted, truth, strict=True)]))


def ontology_macro_f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Macro-F1 over the truth's terms: a prediction right at the ontology level (:func:`ontology_match`)
    counts as the truth's term, a wrong one as its own term ('' for none)."""
    truth = np.asarray(truth, dtype=str)
    credited = np.array(
        [t if ontology_match(str(p), t) else str(p) for p, t in zip(predicted, truth, strict=True)], dtype=str
    )
    return float(f1_score(truth, credited, labels=np.unique(truth), average="macro", zero_division=0))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """ECE of a reported confidence (max probability) against correctness, equal-width bins."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def classification_report(predicted: np.ndarray, truth: np.ndarray, confidence: np.ndarray) -> dict[str, float]:
    """Exact accuracy, macro-F1 and ECE for labels from the same label set."""
    correct = np.asarray(predicted) == np.asarray(truth)
    return {
        "accuracy": round(float(correct.mean()), 4),
        "macro_f1": round(float(f1_score(truth, predicted, average="macro")), 4),
        "ece": round(expected_calibration_error(confidence, correct), 4),
        "n_cells": len(truth),
    }
