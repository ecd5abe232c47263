"""Training of the ``scanvi`` family: SCVI -> SCANVI on the reference's raw counts, kNN index, UMAP."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.model_selection import train_test_split

from model_zoo import novelty
from model_zoo.metrics import classification_report
from model_zoo.placement import NearestReference
from model_zoo.pyfunc_io import Trained
from model_zoo.scanvi import compute, scvi_model

logger = logging.getLogger(__name__)

UNCERTAINTY = (
    "1 - the weighted vote share of the predicted label among the cell's nearest reference cells in the "
    "scANVI latent space (the HLCA's label-transfer uncertainty, after scArches query surgery); 0 = all "
    "neighbours agree. Above the runner's --unassigned-threshold the "
    "answer backs off to a common Cell Ontology ancestor whose summed probability passes, else 'Unassigned'."
)
STORES = (
    "the scvi-tools scANVI model directory (model.pt: the torch state dict and setup registry that "
    "scvi-tools saves), and per-cell latent coordinates, labels and UMAP coordinates of the reference, "
    "not its expression"
)
# the scArches surgery is fine-tuned on the query: the runner hands the whole query over in one call, so that
# no cell's label depends on which other cells share its block
QUERY_MAPPING = "whole_query"
DEFAULTS = {
    # genes: Seurat v3 highly variable genes (per batch when the reference has several), plus every gene
    # detected in at least min_detection of the reference cells. Measured on Kang 2018 (pbmc-scanvi):
    # 2000 HVGs + detected in 10% (5059 genes, 1093 in Kang) 0.74-0.76; detected in 30% (995 genes) 0.77,
    # 0.81 with the missing genes filled (compute.fill_missing). min_detection None: the HVGs alone (the
    # lung-cell-lines recipe: deep plates, where 30% detection keeps thousands of ubiquitous genes).
    "n_hvg": 0,
    "min_detection": 0.3,
    "n_latent": 10,
    "n_hidden": 128,
    "scvi_epochs": 100,  # at most; early stopping on the held-out ELBO
    "scanvi_epochs": 20,
    "samples_per_label": 100,
    # surgery epochs at most, at annotation time (early stopping); measured on Kang: 0 -> 0.807, 5 -> 0.800,
    # 20 -> 0.809 (4 s for 1,556 cells)
    "query_epochs": 20,
    "n_neighbors": 50,  # k of the weighted kNN label transfer (the HLCA used 50)
    "umap_neighbors": 15,
    "test_fraction": 0.15,  # held out to measure the shipped model
    "device": "cpu",
    "seed": 0,
}


@dataclass
class ScanviModel(Trained):
    """A trained model: the arrays of the label transfer (``weights``) and the scvi-tools SCANVI model."""

    scanvi: object = None  # scvi.model.SCANVI

    def save_scvi(self, path: Path) -> None:
        self.scanvi.save(str(path), overwrite=False, save_anndata=False)


def train(
    counts: sp.csr_matrix,
    genes: np.ndarray,
    labels: np.ndarray,
    params: dict | None = None,
    batch: np.ndarray | None = None,
):
    """Fit the family on raw reference counts (cells x genes), one label per cell, and a batch per cell.

    Without ``batch`` all reference cells form one batch; the query always forms a new one.

    Returns
    -------
    model
        :class:`ScanviModel`.
    report
        ``params`` used, split sizes, the genes kept, epochs run, training time, and ``held_out``
        (accuracy, macro-F1, ECE of the kNN label transfer for held-out reference cells).
    """
    import umap  # heavy import, only when training

    params = {**DEFAULTS, **(params or {})}
    start = time.perf_counter()
    counts = sp.csr_matrix(counts, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    batch = np.full(len(labels), "reference") if batch is None else np.asarray(batch).astype(str)
    hvg = (
        scvi_model.highly_variable(counts, genes, batch, params["n_hvg"])
        if params["n_hvg"]
        else np.zeros(counts.shape[1], dtype=bool)
    )
    kept = compute.select_genes(counts, hvg, params["min_detection"])
    composition, totals = novelty.composition_counts(counts, genes, kept)  # before counts keep only `kept`
    counts, genes = counts[:, kept], np.asarray(genes)[kept].astype(str)
    floor = params["min_detection"]
    rest = "no detection floor" if floor is None else f"the rest detected in >= {floor} of cells"
    logger.info("scanvi: %d genes (%d highly variable, %s)", len(kept), hvg.sum(), rest)

    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=params["test_fraction"], stratify=labels, random_state=params["seed"]
    )
    reference = scvi_model.make_anndata(counts[train_idx], genes, batch[train_idx], labels[train_idx])
    model, epochs = scvi_model.train_reference(reference, params)
    training_seconds = time.perf_counter() - start
    classes = np.unique(labels)
    reference_latent = scvi_model.latent(model)
    held = scvi_model.make_anndata(
        counts[test_idx], genes, batch[test_idx], np.full(len(test_idx), scvi_model.UNLABELED)
    )
    test_latent = scvi_model.latent(model, held)
    reference_label = np.searchsorted(classes, labels[train_idx])
    index = NearestReference(reference_latent, params["n_neighbors"])  # as the pyfunc searches
    distances, neighbours = index.neighbours(test_latent)
    probs = compute.transfer_labels(distances, neighbours, reference_label, len(classes))
    share = novelty.class_gene_share(composition[train_idx], totals[train_idx], labels[train_idx], classes)
    scales = novelty.held_out_scales(
        novelty.mean_distance(distances), composition[test_idx], totals[test_idx], labels[test_idx], classes, share
    )
    scales |= novelty.local_distance_fit(
        NearestReference(reference_latent, novelty.NEIGHBORS + 1), reference_latent, reference_label, len(classes)
    )
    embedding = umap.UMAP(n_neighbors=params["umap_neighbors"], random_state=params["seed"]).fit_transform(
        reference_latent
    )
    weights = compute.ScanviWeights(
        genes=genes,
        classes=classes,
        reference_latent=reference_latent.astype(np.float32),
        reference_label=reference_label,
        reference_umap=np.asarray(embedding, dtype=np.float32),
        n_neighbors=index.k,
        query_epochs=params["query_epochs"],
        count_share=np.asarray(counts.sum(axis=0)).ravel() / counts.sum(),
        median_total=float(np.median(np.asarray(counts.sum(axis=1)).ravel())),
        reference_batch=str(batch[train_idx][0]),
        class_gene_share=share,
        **scales,
    )
    report = {
        "params": params,
        "n_cells": {"train": len(train_idx), "test": len(test_idx)},
        "n_genes": {"highly_variable": int(hvg.sum()), "kept": len(kept)},
        "epochs": epochs,
        "held_out": classification_report(classes[probs.argmax(axis=1)], labels[test_idx], probs.max(axis=1)),
        "novelty": novelty.report(scales),
        "training_seconds": round(training_seconds, 1),
    }
    return ScanviModel(weights, model), report
