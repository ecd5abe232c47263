"""Training of the ``linear`` family from a reference counts matrix (no AnnData here either)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.model_selection import train_test_split

from model_zoo import novelty
from model_zoo.linear import compute
from model_zoo.metrics import classification_report
from model_zoo.placement import NearestReference

logger = logging.getLogger(__name__)

UNCERTAINTY = (
    "1 - the calibrated probability of the predicted class (temperature scaling fitted on held-out "
    "reference cells); 0 = certain. Above the runner's --unassigned-threshold the "
    "answer backs off to a common Cell Ontology ancestor whose summed probability passes, else 'Unassigned'."
)
STORES = (
    "learned parameters (logistic-regression coefficients, PCA loadings) and per-cell PCA/UMAP "
    "coordinates of the reference, not its expression"
)
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


def split_reference(y: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train / calibration / test indices (``calibration_fraction``, ``test_fraction``, ``seed``)."""
    idx = np.arange(len(y))
    held = params["calibration_fraction"] + params["test_fraction"]
    train, rest = train_test_split(idx, test_size=held, stratify=y, random_state=params["seed"])
    calib, test = train_test_split(
        rest, test_size=params["test_fraction"] / held, stratify=y[rest], random_state=params["seed"]
    )
    return train, calib, test


@dataclass(frozen=True)
class Features:
    """The reference genes a model keeps, and the reference's log1p(CP10k) expression over them."""

    selected: np.ndarray  # indices of the kept genes among the reference's genes
    n_candidates: int  # genes detected in >= min_cells cells
    log_expr: sp.csr_matrix  # cells x kept genes, normalised by each cell's full library
    count_share: np.ndarray  # share of all reference counts carried by each kept gene


def select_features(counts: sp.csr_matrix, labels: np.ndarray, train_idx: np.ndarray, params: dict) -> Features:
    """CellTypist's feature selection: genes with the largest |coef| of a logistic screen on the train split."""
    total = np.asarray(counts.sum(axis=1)).ravel()
    candidates = np.flatnonzero(np.asarray((counts > 0).sum(axis=0)).ravel() >= params["min_cells"])
    log_expr = compute.log_normalise(counts[:, candidates], total)  # normalised by the full library
    logger.info("training on %d cells, %d candidate genes", len(train_idx), len(candidates))
    screen = compute.fit_logistic(log_expr[train_idx], labels[train_idx], c=params["C"], seed=params["seed"])
    selected = candidates[compute.select_features(screen.coef_, params["top_genes"])]
    return Features(
        selected=selected,
        n_candidates=len(candidates),
        log_expr=compute.log_normalise(counts[:, selected], total),
        count_share=novelty.gene_share(counts[:, selected], total),
    )


def novelty_scales(
    counts: sp.csr_matrix,
    genes: np.ndarray,
    features: Features,
    latent: np.ndarray,
    labels: np.ndarray,
    held: np.ndarray,
) -> dict:
    """The novelty score's per-class gene shares and scales (:mod:`model_zoo.novelty`): the shares over the
    training cells (``held`` left out), the scales on the ``held`` reference cells (their distance to the other
    reference cells, their share of counts in the model's genes)."""
    classes = np.unique(labels)
    model_counts, totals = novelty.composition_counts(counts, genes, features.selected)
    train = np.setdiff1d(np.arange(len(labels)), held)
    share = novelty.class_gene_share(model_counts[train], totals[train], labels[train], classes)
    index = NearestReference(latent, novelty.NEIGHBORS + 1)
    local = novelty.local_distance_fit(index, latent, np.searchsorted(classes, labels), len(classes))
    held_distance = local["novelty_reference_distance"][held]  # each measured against the other cells
    scales = novelty.held_out_scales(held_distance, model_counts[held], totals[held], labels[held], classes, share)
    return {"class_gene_share": share, **local, **scales}


def fit_embedding(features: Features, params: dict) -> dict:
    """PCA (``n_pcs``) of the reference log-expression and a UMAP (``umap_neighbors``) of its coordinates.

    Returns
    -------
    dict
        The fields of :class:`~model_zoo.linear.compute.PcaSpace` learned from the reference:
        ``count_share``, ``pca_mean``, ``pca_components``, ``ridge``, ``reference_latent``, ``reference_umap``.
    """
    import umap  # heavy import, only when training

    mean, components, latent = compute.fit_pca(features.log_expr.toarray(), params["n_pcs"])
    embedding = umap.UMAP(n_neighbors=params["umap_neighbors"], random_state=params["seed"]).fit_transform(latent)
    return {
        "count_share": features.count_share,
        "ridge": float(params["ridge"]),
        "pca_mean": mean,
        "pca_components": components,
        "reference_latent": latent,
        "reference_umap": np.asarray(embedding),
    }


def split_sizes(train_idx: np.ndarray, calib_idx: np.ndarray, test_idx: np.ndarray, features: Features) -> dict:
    """The report's ``n_cells`` (train / calibration / test) and ``n_genes`` (candidates / selected)."""
    return {
        "n_cells": {"train": len(train_idx), "calibration": len(calib_idx), "test": len(test_idx)},
        "n_genes": {"candidates": features.n_candidates, "selected": len(features.selected)},
    }


def calibrate(
    logits: np.ndarray, labels: np.ndarray, classes: np.ndarray, calib_idx: np.ndarray, test_idx: np.ndarray
) -> tuple[float, dict]:
    """Fit the softmax temperature on the calibration cells and score the test cells with and without it.

    Returns
    -------
    temperature
        T > 0 to divide the logits by.
    report
        ``temperature`` (rounded), ``held_out`` (exact accuracy, macro-F1 and ECE with the temperature) and
        ``held_out_uncalibrated`` (the same at T = 1).
    """
    temperature = compute.fit_temperature(logits[calib_idx], np.searchsorted(classes, labels[calib_idx]))

    def held_out(temp: float) -> dict[str, float]:
        p = compute.softmax(logits[test_idx] / temp)
        return classification_report(classes[p.argmax(axis=1)], labels[test_idx], p.max(axis=1))

    return temperature, {
        "temperature": round(temperature, 4),
        "held_out": held_out(temperature),
        "held_out_uncalibrated": held_out(1.0),
    }


def train(
    counts: sp.csr_matrix,
    genes: np.ndarray,
    labels: np.ndarray,
    params: dict | None = None,
    batch: np.ndarray | None = None,
):
    """Fit the family on raw reference counts (cells x genes) with one label per cell.

    ``batch`` (one value per cell) is accepted for a uniform interface and not used: the family
    normalises each cell by its own library size and has no batch term.

    Returns
    -------
    weights
        :class:`~model_zoo.linear.compute.LinearWeights` of the shipped model.
    report
        ``params`` used, the split sizes, training time, and held-out metrics: ``held_out`` (exact
        accuracy, macro-F1, ECE of the calibrated probabilities) and ``held_out_uncalibrated``.
    """
    params = {**DEFAULTS, **(params or {})}
    start = time.perf_counter()
    counts = sp.csr_matrix(counts, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    train_idx, calib_idx, test_idx = split_reference(labels, params)
    features = select_features(counts, labels, train_idx, params)
    x = features.log_expr
    model = compute.fit_logistic(x[train_idx], labels[train_idx], c=params["C"], seed=params["seed"])
    classes = model.classes_.astype(str)
    temperature, calibration = calibrate(x @ model.coef_.T + model.intercept_, labels, classes, calib_idx, test_idx)
    space = fit_embedding(features, params)
    held = np.concatenate([calib_idx, test_idx])
    scales = novelty_scales(counts, genes, features, space["reference_latent"], labels, held)
    weights = compute.LinearWeights(
        genes=np.asarray(genes)[features.selected].astype(str),
        classes=classes,
        coef=model.coef_,
        intercept=model.intercept_,
        temperature=temperature,
        **space,
        **scales,
        reference_label=np.searchsorted(classes, labels),
    )
    report = {
        "params": params,
        **split_sizes(train_idx, calib_idx, test_idx, features),
        **calibration,
        "novelty": novelty.report(scales),
        "training_seconds": round(time.perf_counter() - start, 1),
    }
    return weights, report
