"""The AnnData and scvi-tools side of the ``scanvi`` family: reference training and query surgery.

scvi-tools works on AnnData; this module (used by ``train`` and ``pyfunc``) is the only one of the
family that builds one. Field names given to ``setup_anndata`` are constants, so the reference and
every query are registered the same way.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from model_zoo.scanvi import compute

logger = logging.getLogger(__name__)

BATCH_KEY = "cellzoo_batch"
LABELS_KEY = "cellzoo_label"
UNLABELED = "cellzoo_unlabeled"
QUERY_BATCH = "cellzoo_query"  # the batch of every query cell: a new category, learned by the surgery
# scArches' recommended architecture for reference mapping (Lotfollahi et al. 2022)
ARCHES_PARAMS = {
    "use_layer_norm": "both",
    "use_batch_norm": "none",
    "encode_covariates": True,
    "dropout_rate": 0.2,
    "n_layers": 2,
}
MIN_CELLS_FOR_VALIDATION = 100  # smaller query batches train on all cells, for the full epoch budget


def make_anndata(counts: sp.csr_matrix, genes: np.ndarray, batch: np.ndarray, labels: np.ndarray):
    """An AnnData of raw counts with the family's batch and label fields."""
    import anndata as ad

    obs = pd.DataFrame({BATCH_KEY: np.asarray(batch, dtype=str), LABELS_KEY: np.asarray(labels, dtype=str)})
    obs.index = obs.index.astype(str)
    matrix = sp.csr_matrix(counts, dtype=np.float32)
    return ad.AnnData(matrix, obs=obs, var=pd.DataFrame(index=np.asarray(genes)))


def highly_variable(counts: sp.csr_matrix, genes: np.ndarray, batch: np.ndarray, n_top: int) -> np.ndarray:
    """Seurat v3 highly variable genes on raw counts (per batch when there are several), as a mask."""
    import scanpy as sc

    adata = make_anndata(counts, genes, batch, np.full(counts.shape[0], UNLABELED))
    several = len(np.unique(batch)) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = sc.pp.highly_variable_genes(
            adata,
            n_top_genes=min(n_top, counts.shape[1]),
            flavor="seurat_v3",
            batch_key=BATCH_KEY if several else None,
            inplace=False,
        )
    return table["highly_variable"].to_numpy()


def _accelerator(device: str) -> dict:
    return {"accelerator": "gpu" if device.startswith("cuda") else "cpu", "devices": 1}


def train_reference(adata, params: dict) -> tuple[object, dict[str, int]]:
    """SCVI on the reference's raw counts, then SCANVI from it (labels in ``LABELS_KEY``).

    Returns the SCANVI model and the epochs each stage ran.
    """
    import scvi

    scvi.settings.seed = params["seed"]
    scvi.model.SCVI.setup_anndata(adata, batch_key=BATCH_KEY, labels_key=LABELS_KEY)
    vae = scvi.model.SCVI(adata, n_latent=params["n_latent"], n_hidden=params["n_hidden"], **ARCHES_PARAMS)
    vae.train(
        max_epochs=params["scvi_epochs"],
        early_stopping=True,
        enable_progress_bar=False,
        **_accelerator(params["device"]),
    )
    model = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=UNLABELED)
    model.train(
        max_epochs=params["scanvi_epochs"],
        n_samples_per_label=params["samples_per_label"],
        enable_progress_bar=False,
        **_accelerator(params["device"]),
    )
    return model, {"scvi": epochs_run(vae), "scanvi": epochs_run(model)}


def epochs_run(model) -> int:
    return len(model.history["elbo_train"])


def latent(model, adata=None) -> np.ndarray:
    """Latent means of ``adata`` (registered like the model's reference), or of the model's own cells."""
    return np.asarray(model.get_latent_representation(adata))


def map_query(
    model_dir: Path, counts: sp.csr_matrix, present: np.ndarray, weights, *, max_epochs: int, device: str, seed: int
) -> tuple[np.ndarray, int]:
    """scArches surgery: extend the reference model by the query's batch, train only the new weights.

    When the query lacks model genes, its counts are first scaled to the reference's depth and the
    missing genes filled from the reference model (:func:`~model_zoo.scanvi.compute.fill_missing`).
    Returns the query's latent means and the number of epochs run (early stopping on the held-out
    ELBO when the query has at least ``MIN_CELLS_FOR_VALIDATION`` cells).
    """
    import scvi

    scvi.settings.seed = seed
    genes, n_cells = weights.genes, counts.shape[0]
    unlabeled = np.full(n_cells, UNLABELED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not present.all():
            scaled = compute.scale_to_reference_depth(counts, present, weights)
            as_reference = make_anndata(scaled, genes, np.full(n_cells, weights.reference_batch), unlabeled)
            reference = scvi.model.SCANVI.load_query_data(as_reference, str(model_dir), **_device_args(device))
            reference.is_trained_ = True  # the reference model as trained: no new weights for a known batch
            expression = reference.get_normalized_expression(as_reference, library_size=1.0, return_numpy=True)
            counts = compute.fill_missing(scaled, present, np.asarray(expression))
        adata = make_anndata(counts, genes, np.full(n_cells, QUERY_BATCH), unlabeled)
        model = scvi.model.SCANVI.load_query_data(adata, str(model_dir), **_device_args(device))
        validate = n_cells >= MIN_CELLS_FOR_VALIDATION
        model.train(
            max_epochs=max_epochs,
            early_stopping=validate,
            train_size=0.9 if validate else 1.0,
            check_val_every_n_epoch=1 if validate else None,
            plan_kwargs={"weight_decay": 0.0},
            enable_progress_bar=False,
            **_accelerator(device),
        )
    return latent(model), epochs_run(model)


def _device_args(device: str) -> dict:
    return {"accelerator": "gpu" if device.startswith("cuda") else "cpu", "device": "auto"}
