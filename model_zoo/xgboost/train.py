"""Training of the ``xgboost`` family from a reference counts matrix (no AnnData here either)."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import scipy.sparse as sp

from model_zoo import novelty
from model_zoo.linear import train as linear_train
from model_zoo.xgboost import compute

logger = logging.getLogger(__name__)

UNCERTAINTY = (
    "1 - the calibrated probability of the predicted class (softmax of the boosted trees' margins with a "
    "temperature fitted on held-out reference cells); 0 = certain. Above the runner's --unassigned-threshold "
    "the answer backs off to a common Cell Ontology ancestor whose summed probability passes, else 'Unassigned'."
)
STORES = (
    "the boosted trees (xgboost JSON), the PCA loadings of the embedding, and per-cell PCA/UMAP "
    "coordinates of the reference, not its expression"
)
DEFAULTS = {
    **linear_train.DEFAULTS,  # the embedding: gene screen (min_cells, top_genes, C), n_pcs, ridge, UMAP, split
    "n_rounds": 300,  # boosting rounds at most
    "early_stopping_rounds": 20,  # on the log-loss of the calibration cells
    "max_depth": 4,
    "learning_rate": 0.1,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 1.0,
    "n_jobs": min(4, os.cpu_count() or 1),
    "device": "cpu",  # 'cuda' trains on a GPU
}


def train(
    counts: sp.csr_matrix,
    genes: np.ndarray,
    labels: np.ndarray,
    params: dict | None = None,
    batch: np.ndarray | None = None,
):
    """Fit the family on raw reference counts (cells x genes) with one label per cell.

    ``batch`` is accepted for a uniform interface and not used (as in ``linear``).

    Returns
    -------
    model
        :class:`~model_zoo.xgboost.compute.XGBoostModel`: the weights and the fitted booster.
    report
        ``params`` used, split sizes, boosting rounds, training time, and held-out metrics:
        ``held_out`` (calibrated) and ``held_out_uncalibrated``.
    """
    params = {**DEFAULTS, **(params or {})}
    start = time.perf_counter()
    counts = sp.csr_matrix(counts, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    train_idx, calib_idx, test_idx = linear_train.split_reference(labels, params)
    features = linear_train.select_features(counts, labels, train_idx, params)
    space = linear_train.fit_embedding(features, params)
    latent = space["reference_latent"]
    classes = np.unique(labels)
    y_index = np.searchsorted(classes, labels)
    booster = compute.fit_booster(
        latent[train_idx], y_index[train_idx], latent[calib_idx], y_index[calib_idx], len(classes), params
    )
    temperature, calibration = linear_train.calibrate(
        compute.margins(booster, latent), labels, classes, calib_idx, test_idx
    )
    held = np.concatenate([calib_idx, test_idx])
    scales = linear_train.novelty_scales(counts, genes, features, latent, labels, held)
    weights = compute.XGBoostWeights(
        genes=np.asarray(genes)[features.selected].astype(str),
        classes=classes,
        temperature=temperature,
        **space,
        **scales,
        reference_label=y_index,
    )
    report = {
        "params": params,
        **linear_train.split_sizes(train_idx, calib_idx, test_idx, features),
        "boosting_rounds": booster.num_boosted_rounds(),
        **calibration,
        "novelty": novelty.report(scales),
        "training_seconds": round(time.perf_counter() - start, 1),
    }
    return compute.XGBoostModel(weights, booster), report
