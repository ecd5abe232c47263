"""Streaming an h5ad from disk a block of cells at a time gives what the in-memory path gives, and fails safely."""

from __future__ import annotations

import stat
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from benchmarks.synthetic import write_synthetic
from runner.invoke import read_model_info
from runner.sources import StreamedFile, stored_cells
from tests.conftest import annotate_file, data_file, run_cli, sha256, unpack_zoo_model

KEY = "pbmc"


def assert_same_results(streamed: Path, in_memory: Path) -> None:
    a, b = ad.read_h5ad(streamed, backed="r"), ad.read_h5ad(in_memory, backed="r")
    assert a.n_obs == b.n_obs and (a.obs_names == b.obs_names).all()
    for column in ("predicted", "ontology_term_id", "finest", "answer_kind", "compartment", "lineage"):
        assert (a.obs[f"{KEY}_{column}"].astype(str) == b.obs[f"{KEY}_{column}"].astype(str)).all()
    for column in ("uncertainty", "novelty"):  # the novelty's composition needs each cell's total: every block's
        np.testing.assert_allclose(a.obs[f"{KEY}_{column}"], b.obs[f"{KEY}_{column}"], atol=1e-5)
    for key in (f"{KEY}_probabilities", f"X_{KEY}", f"X_{KEY}_umap"):
        np.testing.assert_allclose(np.asarray(a.obsm[key]), np.asarray(b.obsm[key]), atol=1e-5)
    assert a.uns[KEY]["params"]["streamed"] and not b.uns[KEY]["params"]["streamed"]


@pytest.mark.slow
def test_synthetic_200k_cells_streamed_equal_in_memory(tmp_path):
    """200,000 SYNTHETIC cells (SoupX cells resampled with Poisson noise), over the pbmc model's genes that
    SoupX has plus as many others: streamed in 20 blocks by default (>= 100,000 cells), and read whole."""
    genes = read_model_info(unpack_zoo_model("pbmc-1.0.0", tmp_path / "model")).genes
    reference = ad.read_h5ad(data_file("pbmc/soupx_pbmc4k.h5ad"), backed="r")
    model_genes = reference.var_names[reference.var_names.isin(genes)]
    others = reference.var_names[~reference.var_names.isin(genes)][: len(model_genes)]
    query = tmp_path / "synthetic_200k.h5ad"
    write_synthetic(query, 200_000, genes=list(model_genes) + list(others), seed=1)
    before = sha256(query)

    streamed, in_memory = tmp_path / "streamed.h5ad", tmp_path / "in_memory.h5ad"
    done = run_cli("annotate", str(query), "-m", "pbmc", "-o", str(streamed), "-q")
    assert done.returncode == 0, done.stderr
    done = run_cli("annotate", str(query), "-m", "pbmc", "-o", str(in_memory), "--in-memory", "-q")
    assert done.returncode == 0, done.stderr

    assert sha256(query) == before  # the input is never modified
    assert_same_results(streamed, in_memory)
    out = ad.read_h5ad(streamed, backed="r")
    assert out.n_obs == 200_000
    with h5py.File(query) as f_in, h5py.File(streamed) as f_out:  # the matrix is the input's, byte for byte
        for part in ("data", "indices", "indptr"):
            assert np.array_equal(f_in[f"X/{part}"][-1000:], f_out[f"X/{part}"][-1000:])
    # synthetic cells drawn from SoupX keep their source label: the model must mostly agree with it
    truth = out.obs["Annotation"].astype(str).to_numpy()
    predicted = out.obs[f"{KEY}_predicted"].astype(str).to_numpy()
    assert np.mean(predicted[truth != "?"] == truth[truth != "?"]) > 0.9


def small_query(path, n_cells: int = 300, *, csc: bool = False, poison_cell: int | None = None) -> None:
    """Real SoupX cells written as an h5ad; optionally stored column-wise, or with one cell's counts negative."""
    adata = ad.read_h5ad(data_file("pbmc/soupx_pbmc4k.h5ad"))[:n_cells].copy()
    x = adata.X.tocsr().astype(np.float32)
    if poison_cell is not None:
        row = slice(x.indptr[poison_cell], x.indptr[poison_cell + 1])
        x.data[row] = -1.0
    adata.X = sp.csc_matrix(x) if csc else x
    adata.write_h5ad(path)


def test_streamed_small_file_in_blocks_equals_in_memory(tmp_path):
    query = tmp_path / "q.h5ad"
    small_query(query)
    streamed, in_memory = tmp_path / "s.h5ad", tmp_path / "m.h5ad"
    done = run_cli("annotate", str(query), "-m", "pbmc", "-o", str(streamed), "--backed", "--batch-size", "64")
    assert done.returncode == 0, done.stderr
    assert run_cli("annotate", str(query), "-m", "pbmc", "-o", str(in_memory), "--batch-size", "64").returncode == 0
    assert_same_results(streamed, in_memory)
    out = ad.read_h5ad(streamed)
    assert list(out.obs.columns[:2]) == ["Cluster", "Annotation"]  # the input's obs is kept, results added
    # outputs get the permissions of any new file (not the private mode of a temporary file)
    mode = stat.S_IMODE(query.stat().st_mode)
    assert stat.S_IMODE(streamed.stat().st_mode) == stat.S_IMODE(in_memory.stat().st_mode) == mode


def test_streamed_failure_midway_writes_nothing(tmp_path):
    query = tmp_path / "q.h5ad"
    small_query(query, poison_cell=250)  # in the fourth block of 64 cells: found after three were annotated
    before = sha256(query)
    out = tmp_path / "out.h5ad"
    done = run_cli("annotate", str(query), "-m", "pbmc", "-o", str(out), "--backed", "--batch-size", "64")
    assert done.returncode == 1
    assert "negative values" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["q.h5ad"]
    assert sha256(query) == before


def test_column_stored_matrix_cannot_be_streamed(tmp_path):
    query = tmp_path / "q.h5ad"
    small_query(query, csc=True)
    done = run_cli("annotate", str(query), "-m", "pbmc", "-o", str(tmp_path / "out.h5ad"), "--backed")
    assert done.returncode == 2
    assert "csc_matrix" in done.stderr and "--in-memory" in done.stderr
    # without --backed a small column-stored file is read whole, as before
    assert run_cli("annotate", str(query), "-m", "pbmc", "-o", str(tmp_path / "out.h5ad")).returncode == 0


def test_auto_streaming_looks_at_the_matrix_holding_the_counts(tmp_path):
    """Whether a large file is streamed depends on how its counts are stored, not X: here X is by row, the
    counts layer by column (CSC), so that file must be read whole when --counts-layer counts is asked for."""
    query = tmp_path / "q.h5ad"
    small_query(query)
    adata = ad.read_h5ad(query)
    adata.layers["counts"] = sp.csc_matrix(adata.X)
    adata.write_h5ad(query)
    assert stored_cells(query, None) == (300, True)
    assert stored_cells(query, "counts") == (300, False)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_store_streamed_equals_in_memory_and_keeps_every_element(tmp_path, zarr_format):
    """An AnnData zarr store is streamed like an h5ad (`--backed`, blocks of 64 cells): the same results as
    reading it whole, an h5ad output holding the store's matrices (X, a layer, raw.X), obs columns and obsm,
    and the store untouched."""
    small_query(tmp_path / "q.h5ad")
    adata = ad.read_h5ad(tmp_path / "q.h5ad")
    adata.layers["counts"] = adata.X.copy()
    adata.raw = adata
    adata.obsm["X_mine"] = np.arange(adata.n_obs * 2, dtype=np.float32).reshape(-1, 2)
    query = tmp_path / "q.zarr"
    with ad.settings.override(zarr_write_format=zarr_format):
        adata.write_zarr(query)
    before = tree_digest(query)
    streamed, in_memory = tmp_path / "s.h5ad", tmp_path / "m.h5ad"
    annotate_file(query, "pbmc", output=streamed, backed=True, batch_size=64)
    annotate_file(query, "pbmc", output=in_memory, backed=False, batch_size=64)
    assert_same_results(streamed, in_memory)
    out = ad.read_h5ad(streamed)
    assert out.uns[KEY]["input_format"] == "zarr (streamed)"
    for got, want in ((out.X, adata.X), (out.layers["counts"], adata.X), (out.raw.X, adata.raw.X)):
        assert (got != want).nnz == 0
    np.testing.assert_array_equal(out.obsm["X_mine"], adata.obsm["X_mine"])
    assert list(out.obs.columns[:2]) == ["Cluster", "Annotation"]
    assert tree_digest(query) == before  # the input is never modified
    assert stored_cells(query, None, "zarr") == (300, True)


def test_backed_is_for_h5ad_and_zarr_only(tmp_path):
    table = data_file("formats/celltypist_sample_cell_by_gene.csv.gz")
    done = run_cli("annotate", str(table), "-m", "pbmc", "-o", str(tmp_path / "out.h5ad"), "--backed")
    assert done.returncode == 2 and "h5ad files and zarr stores only" in done.stderr
    assert not (tmp_path / "out.h5ad").exists()


def test_streamed_overwrite_replaces_result_keys_and_table(tmp_path):
    query = tmp_path / "q.h5ad"
    small_query(query)
    first, second, table_path = tmp_path / "first.h5ad", tmp_path / "second.h5ad", str(tmp_path / "t.csv")
    assert run_cli("annotate", str(query), "-m", "pbmc", "-o", str(first), "--backed").returncode == 0
    args = ("annotate", str(first), "-m", "pbmc", "-o", str(second), "--backed", "--table", table_path)
    done = run_cli(*args)
    assert done.returncode == 1 and "--overwrite" in done.stderr  # the keys exist already
    done = run_cli(*args, "--overwrite")
    assert done.returncode == 0, done.stderr
    out = ad.read_h5ad(second)
    table = pd.read_csv(table_path)
    assert (table["barcode"].to_numpy() == out.obs_names.to_numpy()).all()
    assert (table["label"].astype(str).to_numpy() == out.obs[f"{KEY}_predicted"].astype(str).to_numpy()).all()


def test_streamed_blocks_are_the_stored_rows(tmp_path):
    """The streamed reader reuses two buffers in turn: each block equals the stored rows, and the block
    read before the latest one is still intact."""
    rng = np.random.default_rng(1)
    matrix = sp.random(2_500, 300, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    matrix.data = np.ceil(matrix.data * 20)
    ad.AnnData(matrix).write_h5ad(tmp_path / "q.h5ad")
    query = StreamedFile(tmp_path / "q.h5ad", None)
    try:
        previous = None
        for start in range(0, 2_500, 700):
            block = query.rows(start, start + 700)
            assert (block != matrix[start : start + 700]).nnz == 0
            if previous is not None:
                assert (previous != matrix[start - 700 : start]).nnz == 0
            previous = block
    finally:
        query.close()
