"""Training of the ``linear`` family from a reference counts matrix (no AnnData here either)."""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp
from sklearn.model_selection import train_test_split

from model_zoo.linear import compute
from model_zoo.metrics import classification_report

logger = logging.getLogger(__name__)

DEFAULTS = {
    "min_cells": 10,  # a gene must be detected in this many reference cells to be a candidate feature
    "top_genes": 300,  # CellTypist's feature selection: top |coef| genes per class
    "C": 0.1,  # inverse L2 strength of the logistic regression
    "n_pcs": 50,  # PCA components: embedding and imputation of missing genes
    "ridge": 1.0,  # ridge penalty when projecting a query that lacks genes
    "umap_neighbors": 15,
    "calibration_fraction": 0.15,  # held out to fit the temperature
    "test_fraction": 0.15,  # held out to measure the shipped model
    "seed": 0,
}


def _split(y: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = np.arange(len(y))
    held = params["calibration_fraction"] + params["test_fraction"]
    train, rest = train_test_split(idx, test_size=held, stratify=y, random_state=params["seed"])
    calib, test = train_test_split(
        rest, test_size=params["test_fraction"] / held, stratify=y[rest], random_state=params["seed"]
    )
    return train, calib, test


def train(counts: sp.csr_matrix, genes: np.ndarray, labels: np.ndarray, params: dict | None = None):
    """Fit the family on raw reference counts (cells x genes) with one label per cell.

    Returns
    -------
    weights
        :class:`~model_zoo.linear.compute.LinearWeights` of the shipped model.
    report
        ``params`` used, the split sizes, training time, and held-out metrics: ``held_out`` (exact
        accuracy, macro-F1, ECE of the calibrated probabilities) and ``held_out_uncalibrated``.
    """
    import umap  # heavy import, only when training

    params = {**DEFAULTS, **(params or {})}
    start = time.perf_counter()
    counts = sp.csr_matrix(counts, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    total = np.asarray(counts.sum(axis=1)).ravel()
    detected = np.asarray((counts > 0).sum(axis=0)).ravel() >= params["min_cells"]
    candidates = np.flatnonzero(detected)
    log_expr = compute.log_normalise(counts[:, candidates], total)  # normalised by the full library
    train_idx, calib_idx, test_idx = _split(labels, params)
    logger.info("training on %d cells, %d candidate genes", len(train_idx), len(candidates))

    screen = compute.fit_logistic(log_expr[train_idx], labels[train_idx], c=params["C"], seed=params["seed"])
    selected = candidates[compute.select_features(screen.coef_, params["top_genes"])]
    x = compute.log_normalise(counts[:, selected], total)
    model = compute.fit_logistic(x[train_idx], labels[train_idx], c=params["C"], seed=params["seed"])
    classes = model.classes_.astype(str)
    y_index = np.searchsorted(classes, labels)
    logits = x @ model.coef_.T + model.intercept_
    temperature = compute.fit_temperature(logits[calib_idx], y_index[calib_idx])

    dense = x.toarray()
    mean, components, latent = compute.fit_pca(dense, params["n_pcs"])
    embedding = umap.UMAP(n_neighbors=params["umap_neighbors"], random_state=params["seed"]).fit_transform(latent)
    weights = compute.LinearWeights(
        genes=np.asarray(genes)[selected].astype(str),
        classes=classes,
        coef=model.coef_,
        intercept=model.intercept_,
        temperature=temperature,
        count_share=np.asarray(counts[:, selected].sum(axis=0)).ravel() / counts.sum(),
        pca_mean=mean,
        pca_components=components,
        ridge=float(params["ridge"]),
        reference_latent=latent,
        reference_umap=np.asarray(embedding),
    )

    def held_out(temp: float) -> dict[str, float]:
        p = compute.softmax(logits[test_idx] / temp)
        return classification_report(classes[p.argmax(axis=1)], labels[test_idx], p.max(axis=1))

    report = {
        "params": params,
        "n_cells": {"train": len(train_idx), "calibration": len(calib_idx), "test": len(test_idx)},
        "n_genes": {"candidates": len(candidates), "selected": len(selected)},
        "temperature": round(temperature, 4),
        "held_out": held_out(temperature),
        "held_out_uncalibrated": held_out(1.0),
        "training_seconds": round(time.perf_counter() - start, 1),
    }
    return weights, report
