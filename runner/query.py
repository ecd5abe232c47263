"""Reading the query and finding its raw counts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from runner.errors import InputError, UsageError

logger = logging.getLogger(__name__)

COUNT_CHECK_VALUES = 2_000_000  # values inspected for integrality (the first ones; enough to catch log data)


@dataclass(frozen=True)
class Counts:
    matrix: sp.csr_matrix  # cells x genes, raw counts
    var: pd.DataFrame  # the genes of ``matrix``
    source: str  # "layers['counts']", "raw.X" or "X"


def read_query(path: Path):
    """Read an h5ad file into memory (the file itself is only read)."""
    import anndata as ad
    import h5py

    if not path.exists():
        raise UsageError(f"input file {path} does not exist")
    if path.is_dir():
        raise UsageError(f"input {path} is a folder; give an .h5ad file")
    if not h5py.is_hdf5(path):
        raise InputError(f"{path} is not an h5ad file (not HDF5). Convert it with scanpy/anndata and write .h5ad.")
    try:
        return ad.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise InputError(f"{path} is HDF5 but could not be read as h5ad: {err}") from err


def find_counts(adata, layer: str | None = None) -> Counts:
    """The raw counts: the named layer, else ``raw.X``, else ``X``; checked to look like counts."""
    if layer is not None:
        if layer not in adata.layers:
            raise UsageError(
                f"--counts-layer {layer!r} is not a layer of the input; layers: {', '.join(adata.layers) or 'none'}"
            )
        counts = Counts(sp.csr_matrix(adata.layers[layer]), adata.var, f"layers[{layer!r}]")
    elif adata.raw is not None:
        counts = Counts(sp.csr_matrix(adata.raw.X), adata.raw.var, "raw.X")
    else:
        counts = Counts(sp.csr_matrix(adata.X), adata.var, "X")
    check_counts(counts, list(adata.layers))
    return counts


def check_counts(counts: Counts, layers: list[str]) -> None:
    values = counts.matrix.data
    hint = (
        f"The model needs raw counts: pass --counts-layer with the layer that holds them "
        f"(layers: {', '.join(layers) or 'none'}), or keep raw counts in X or raw.X."
    )
    if counts.matrix.shape[0] == 0 or counts.matrix.shape[1] == 0:
        raise InputError(f"{counts.source} is empty ({counts.matrix.shape[0]} cells x {counts.matrix.shape[1]} genes)")
    if np.isnan(values).any() or np.isinf(values).any():
        raise InputError(f"{counts.source} holds NaN or infinite values; raw counts are finite integers. {hint}")
    if (values < 0).any():
        raise InputError(f"{counts.source} holds negative values (min {values.min():.3g}): not raw counts. {hint}")
    sample = values[:COUNT_CHECK_VALUES]
    fractional = sample[sample != np.round(sample)]
    if fractional.size:
        raise InputError(
            f"{counts.source} holds non-integer values (e.g. {fractional[0]:.4g}): it looks normalised or "
            f"log-transformed, not raw counts. {hint}"
        )
    logger.info("counts from %s: %d cells x %d genes", counts.source, *counts.matrix.shape)
