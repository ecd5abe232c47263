"""Property-based tests over the readers: any small count matrix, written in any format, reads back as
written; any truncated or corrupted file gives a cellzoo error, never another exception."""

from __future__ import annotations

import gzip
import os
import zipfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from runner.errors import CellzooError
from runner.readers import ReadOptions, read_input

GENES = ["CD3E", "CD3D", "CD8A", "CD4", "MS4A1", "CD79A", "LYZ", "CD14", "NKG7", "GNLY", "IL7R", "FCGR3A", "PPBP"]
FUZZ = settings(
    max_examples=int(os.environ.get("CELLZOO_FUZZ_EXAMPLES", "25")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def write_table(x: np.ndarray, cells, genes, path: Path, *, genes_by_cells: bool) -> Path:
    frame = pd.DataFrame(x, index=cells, columns=genes)
    (frame.T if genes_by_cells else frame).to_csv(path, sep="\t" if ".tsv" in path.name else ",")
    return path


def write_mtx(x: np.ndarray, cells, genes, folder: Path) -> Path:
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.coo_matrix(x.T))
    (folder / "barcodes.tsv").write_text("".join(f"{c}\n" for c in cells))
    (folder / "features.tsv").write_text("".join(f"ENSG{i:011d}\t{g}\tGene Expression\n" for i, g in enumerate(genes)))
    return folder


def write_zip(x, cells, genes, path: Path) -> Path:
    folder = write_mtx(x, cells, genes, path.with_suffix(".d"))
    with zipfile.ZipFile(path, "w") as zf:
        for file in folder.iterdir():
            zf.write(file, f"sample/{file.name}")
    return path


def write_10x_h5(x, cells, genes, path: Path) -> Path:
    m = sp.csc_matrix(x.T)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        for name, value in (("data", m.data), ("indices", m.indices), ("indptr", m.indptr), ("shape", m.shape)):
            g[name] = value
        g["barcodes"] = np.array(cells, dtype="S")
        g["features/id"] = np.array([f"ENSG{i:011d}" for i in range(len(genes))], dtype="S")
        g["features/name"] = np.array(genes, dtype="S")
        g["features/feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        g["features/genome"] = np.array(["GRCh38"] * len(genes), dtype="S")
    return path


def write_h5ad(x, cells, genes, path: Path) -> Path:
    adata = ad.AnnData(X=sp.csr_matrix(x.astype(np.float32)))
    adata.obs_names, adata.var_names = cells, genes
    adata.write_h5ad(path)
    return path


WRITERS = {
    "cells x genes csv": lambda x, c, g, d: write_table(x, c, g, d / "t.csv", genes_by_cells=False),
    "genes x cells tsv.gz": lambda x, c, g, d: write_table(x, c, g, d / "t.tsv.gz", genes_by_cells=True),
    "mtx folder": lambda x, c, g, d: write_mtx(x, c, g, d / "mtx"),
    "zip of mtx": lambda x, c, g, d: write_zip(x, c, g, d / "m.zip"),
    "10x h5": lambda x, c, g, d: write_10x_h5(x, c, g, d / "m.h5"),
    "h5ad": lambda x, c, g, d: write_h5ad(x, c, g, d / "m.h5ad"),
}


@st.composite
def count_matrices(draw):
    n_cells = draw(st.integers(1, 12))
    genes = draw(st.lists(st.sampled_from(GENES), min_size=len(GENES) // 2, max_size=len(GENES), unique=True))
    x = draw(arrays(np.int64, (n_cells, len(genes)), elements=st.integers(0, 500)))
    cells = [f"BC{i}-{draw(st.integers(1, 9))}" for i in range(n_cells)]
    return x, cells, genes


@FUZZ
@given(matrix=count_matrices(), form=st.sampled_from(sorted(WRITERS)))
def test_any_matrix_reads_back_as_written(matrix, form, tmp_path_factory):
    x, cells, genes = matrix
    path = WRITERS[form](x, cells, genes, tmp_path_factory.mktemp("fuzz"))
    adata, _ = read_input(path, ReadOptions())
    assert list(adata.obs_names) == cells and list(adata.var_names) == genes
    np.testing.assert_array_equal(sp.csr_matrix(adata.X).toarray(), x)


@FUZZ
@given(
    form=st.sampled_from(sorted(WRITERS)),
    cut=st.floats(0.05, 0.95),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
)
def test_damaged_files_give_a_cellzoo_error_or_read(form, cut, flips, tmp_path_factory):
    x = np.arange(60).reshape(5, 12) % 7
    path = WRITERS[form](x, [f"c{i}" for i in range(5)], GENES[:12], tmp_path_factory.mktemp("bad"))
    files = sorted(p for p in path.iterdir()) if path.is_dir() else [path]
    target = files[int(cut * len(files)) % len(files)]
    data = bytearray(target.read_bytes())
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    target.write_bytes(bytes(data[: max(1, int(len(data) * cut))]))
    try:
        adata, _ = read_input(path, ReadOptions())
    except CellzooError as err:
        assert str(err)
    else:
        assert adata.n_vars >= 0  # a damage that left the file readable is fine
