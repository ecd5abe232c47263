"""Every input format gives the same predictions as the same cells read from h5ad (real files in shared/data)."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from runner.annotate import annotate
from runner.genes import HUMAN, MOUSE, ortholog_symbols
from runner.options import CheckOptions, ReadOptions, split_options
from runner.readers import read_input
from tests.conftest import data_file, probabilities, run_cli

pytestmark = pytest.mark.slow
KANG_MTX = "formats/kang2018_pbmc_filtered_feature_bc_matrix"
TENX = "formats/scanpy_test_10x_data"


def predictions(path: Path, out: Path, **options) -> pd.DataFrame:
    """Annotate in-process with the zoo's pbmc model; the written results, indexed by barcode."""
    read, checks = split_options(options, (ReadOptions, CheckOptions))
    annotate(path, "pbmc", output=out, read=read, checks=checks)
    result = ad.read_h5ad(out)
    frame = probabilities(result, "pbmc")
    frame["label"] = result.obs["pbmc_predicted"].astype(str)
    frame["finest"] = result.obs["pbmc_finest"].astype(str)
    return frame


def assert_same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same cells (matched by barcode), same labels, same probabilities."""
    assert set(got.index) == set(expected.index)
    got = got.loc[expected.index]
    assert (got["label"] == expected["label"]).all()
    labels = ["label", "finest"]
    np.testing.assert_allclose(got.drop(columns=labels), expected.drop(columns=labels), atol=1e-5)


@pytest.fixture(scope="module")
def kang_from_h5ad(tmp_path_factory) -> pd.DataFrame:
    return predictions(data_file("pbmc/kang2018_pbmc.h5ad"), tmp_path_factory.mktemp("kang") / "h5ad.h5ad")


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(folder.iterdir()):
            zf.write(file, f"{folder.name}/{file.name}")
    return archive


def tar_folder(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return archive


def loom_of(h5ad: Path, loom: Path) -> Path:
    """A loom file as loompy writes it (genes x cells, names in row_attrs/Gene and col_attrs/CellID)."""
    import h5py

    adata = ad.read_h5ad(h5ad)
    with h5py.File(loom, "w") as f:
        f.create_dataset("matrix", data=adata.X.T.toarray(), chunks=(64, 64), compression="gzip")
        f["row_attrs/Gene"] = adata.var_names.to_numpy(dtype="S")
        f["row_attrs/Accession"] = adata.var["ENSEMBL"].to_numpy(dtype="S")
        f["col_attrs/CellID"] = adata.obs_names.to_numpy(dtype="S")
        f.create_group("layers")
    return loom


def zarr_of(h5ad: Path, store: Path) -> Path:
    """The same AnnData written as a zarr store (a folder), as ``AnnData.write_zarr`` writes it."""
    ad.read_h5ad(h5ad).write_zarr(store)
    return store


KANG_INPUTS = {
    "mtx folder": lambda tmp: data_file(KANG_MTX),
    "zarr store": lambda tmp: zarr_of(data_file("pbmc/kang2018_pbmc.h5ad"), tmp / "kang.zarr"),
    "zip of the folder": lambda tmp: zip_folder(data_file(KANG_MTX), tmp / "kang.zip"),
    "tar.gz of the folder": lambda tmp: tar_folder(data_file(KANG_MTX), tmp / "kang.tar.gz"),
    "10x h5 (v3)": lambda tmp: data_file("formats/kang2018_pbmc_filtered_feature_bc_matrix.h5"),
    "loom": lambda tmp: loom_of(data_file("pbmc/kang2018_pbmc.h5ad"), tmp / "kang.loom"),
}


@pytest.mark.parametrize("form", list(KANG_INPUTS))
def test_kang_in_every_format_predicts_as_from_h5ad(form, kang_from_h5ad, tmp_path):
    source = KANG_INPUTS[form](tmp_path)
    assert_same(predictions(source, tmp_path / "out.h5ad"), kang_from_h5ad)
    # the output holds the matrix as read, with the same barcodes as the h5ad
    written = ad.read_h5ad(tmp_path / "out.h5ad")
    reference = ad.read_h5ad(data_file("pbmc/kang2018_pbmc.h5ad"))
    assert (written[reference.obs_names].X != reference.X).nnz == 0


def test_table_output_one_row_per_cell_from_the_cli(tmp_path):
    out, table = tmp_path / "kang.h5ad", tmp_path / "kang.tsv"
    done = run_cli("annotate", str(data_file(KANG_MTX)), "-m", "pbmc", "-o", str(out), "--table", str(table))
    assert done.returncode == 0, done.stderr
    rows = pd.read_csv(table, sep="\t")
    adata = ad.read_h5ad(out)
    assert list(rows.columns[:4]) == ["barcode", "label", "uncertainty", "ontology_term_id"]
    assert list(rows["barcode"]) == list(adata.obs_names) and len(rows) == 1556
    assert (rows["label"].to_numpy() == adata.obs["pbmc_predicted"].astype(str).to_numpy()).all()
    np.testing.assert_allclose(rows.filter(like="prob:").sum(axis=1), 1, atol=1e-4)
    assert not list(tmp_path.glob(".*tmp"))
    parquet = tmp_path / "kang.parquet"
    done = run_cli(
        "annotate",
        str(out),
        "-m",
        "pbmc",
        "-o",
        str(tmp_path / "again.h5ad"),
        "--key-added",
        "again",
        "--table",
        str(parquet),
    )
    assert done.returncode == 0, done.stderr
    assert len(pd.read_parquet(parquet)) == 1556


def scanpy_reading(path: Path, **kwargs) -> ad.AnnData:
    import scanpy as sc

    return sc.read_10x_h5(path, **kwargs) if path.suffix == ".h5" else sc.read_10x_mtx(path, make_unique=False)


@pytest.mark.parametrize(
    ("relative", "options"),
    [
        ("1.2.0/filtered_gene_bc_matrices_h5.h5", {}),
        ("1.2.0/filtered_gene_bc_matrices/hg19_chr21", {}),
        ("1.2.0/multiple_genomes.h5", {"genome": "hg19_chr21"}),
        ("1.2.0/multiple_genomes.h5", {"genome": "another_genome"}),
        ("3.0.0/filtered_feature_bc_matrix.h5", {}),
        ("3.0.0/filtered_feature_bc_matrix", {}),
    ],
)
def test_scanpy_10x_files_read_as_scanpy_reads_them(relative, options):
    path = data_file(f"{TENX}/{relative}")
    ours, _ = read_input(path, ReadOptions(**options))
    theirs = scanpy_reading(path, **options)
    assert list(ours.obs_names) == list(theirs.obs_names)
    assert list(ours.var_names) == list(theirs.var_names)
    assert (sp.csr_matrix(ours.X) != sp.csr_matrix(theirs.X)).nnz == 0


def test_v2_and_v3_files_agree_between_h5_and_folder():
    for h5, folder in (
        ("1.2.0/filtered_gene_bc_matrices_h5.h5", "1.2.0/filtered_gene_bc_matrices/hg19_chr21"),
        ("3.0.0/filtered_feature_bc_matrix.h5", "3.0.0/filtered_feature_bc_matrix"),
    ):
        a, _ = read_input(data_file(f"{TENX}/{h5}"))
        b, _ = read_input(data_file(f"{TENX}/{folder}"))
        assert (a.X != b.X).nnz == 0 and list(a.var_names) == list(b.var_names)


def test_multi_genome_file_lists_its_genomes():
    done = run_cli("annotate", str(data_file(f"{TENX}/1.2.0/multiple_genomes.h5")), "-m", "pbmc")
    assert done.returncode == 2 and "another_genome, hg19_chr21" in done.stderr and "--genome" in done.stderr


@pytest.fixture(scope="module")
def celltypist_table() -> pd.DataFrame:
    return pd.read_csv(data_file("formats/celltypist_sample_cell_by_gene.csv.gz"), index_col=0)


def test_celltypist_table_in_both_orientations_predicts_as_from_h5ad(celltypist_table, tmp_path):
    """The real cells x genes table; the same table transposed (genes x cells, written here); an h5ad of it."""
    cells_by_genes = predictions(data_file("formats/celltypist_sample_cell_by_gene.csv.gz"), tmp_path / "a.h5ad")
    transposed = tmp_path / "genes_by_cells.tsv"
    celltypist_table.round().astype(np.int32).T.to_csv(transposed, sep="\t")
    read, found = read_input(transposed)
    assert found.orientation.startswith("genes x cells") and read.shape == (559, 32786)
    assert_same(predictions(transposed, tmp_path / "b.h5ad"), cells_by_genes)
    h5ad = tmp_path / "table.h5ad"
    ad.AnnData(
        X=sp.csr_matrix(celltypist_table.round().to_numpy(np.float32)),
        obs=pd.DataFrame(index=celltypist_table.index),
        var=pd.DataFrame(index=celltypist_table.columns),
    ).write_h5ad(h5ad)
    assert_same(predictions(h5ad, tmp_path / "c.h5ad"), cells_by_genes)


def test_species_map_annotates_mouse_spelled_genes_like_the_human_ones(kang_from_h5ad, tmp_path):
    """Kang's genes spelled as mouse symbols (CD3E -> Cd3e) are refused by the human model, then mapped back."""
    kang = ad.read_h5ad(data_file("pbmc/kang2018_pbmc.h5ad"))
    mouse = ortholog_symbols(kang.var_names, HUMAN, MOUSE)
    kept = np.flatnonzero(mouse != "")
    mouse_like = ad.AnnData(X=kang.X[:, kept], obs=pd.DataFrame(index=kang.obs_names))
    mouse_like.var_names = mouse[kept]
    path = tmp_path / "mouse_like.h5ad"
    mouse_like.write_h5ad(path)
    refused = run_cli("annotate", str(path), "-m", "pbmc", "-o", str(tmp_path / "no.h5ad"))
    assert refused.returncode == 1 and "look mouse" in refused.stderr and "--species-map" in refused.stderr
    mapped = predictions(path, tmp_path / "yes.h5ad", species_map=True)
    # the finest guesses (the answers also move with the novelty score, which the lost genes shift)
    agreement = float((mapped.loc[kang_from_h5ad.index, "finest"] == kang_from_h5ad["finest"]).mean())
    assert agreement >= 0.9, agreement  # genes without a same-name ortholog are lost


def test_onek1k_overlap_before_and_after_mapping(tmp_path):
    done = run_cli("cellzoo", "inspect", str(data_file("pbmc/onek1k_pbmc.h5ad")), "-m", "pbmc")
    assert done.returncode == 0, done.stderr
    assert "0 of 967 model genes before mapping, 260 after" in done.stdout
    assert "annotate " in done.stdout and "Ensembl ids" in done.stdout and "human" in done.stdout


def test_inspect_names_the_counts_layer_and_writes_nothing(tmp_path):
    kang = ad.read_h5ad(data_file("pbmc/kang2018_pbmc.h5ad"))
    kang.layers["counts"] = kang.X.copy()
    kang.X = sp.csr_matrix(np.log1p(kang.X.toarray() / kang.X.sum(axis=1).A * 1e4))
    path = tmp_path / "normalised.h5ad"
    kang.write_h5ad(path)
    before = sorted(tmp_path.iterdir())
    done = run_cli("cellzoo", "inspect", str(path), "-m", "pbmc")
    assert done.returncode == 0, done.stderr
    assert "--counts-layer counts" in done.stdout and "log-transformed" in done.stdout
    assert sorted(tmp_path.iterdir()) == before


def test_copy_file_is_byte_exact(tmp_path):
    """The streamed output's copy of the input (written around the page cache): every byte, any size."""
    from runner.files import COPY_CHUNK, copy_file

    rng = np.random.default_rng(0)
    for size in (0, 1, 4096, 4097, COPY_CHUNK + 1234):
        source, target = tmp_path / f"in-{size}", tmp_path / f"out-{size}"
        source.write_bytes(rng.bytes(size))
        target.write_bytes(b"old contents, longer than some of the copies")
        assert copy_file(source, target) == target
        assert target.read_bytes() == source.read_bytes()


def test_alignment_selects_the_model_genes_as_the_product_does():
    """The aligned counts equal ``counts @ matrix`` on real counts: model genes in another order, some missing,
    rows whose genes are stored unsorted, empty rows."""
    from runner.genes import Alignment

    kang = sp.csr_matrix(ad.read_h5ad(data_file("pbmc/kang2018_pbmc.h5ad")).X[:497], dtype=np.float32)
    counts = sp.vstack([sp.csr_matrix((3, kang.shape[1]), dtype=np.float32), kang], format="csr")  # empty cells first
    rng = np.random.default_rng(0)
    for row in range(3, 500, 7):  # a row's genes stored in reverse order
        span = slice(counts.indptr[row], counts.indptr[row + 1])
        counts.indices[span], counts.data[span] = counts.indices[span][::-1].copy(), counts.data[span][::-1].copy()
    counts.has_sorted_indices = False
    n_model = 800
    query_gene = rng.choice(counts.shape[1], size=700, replace=False)  # 100 model genes the query lacks
    model_gene = rng.choice(n_model, size=700, replace=False)
    matrix = sp.csr_matrix((np.ones(700), (query_gene, model_gene)), shape=(counts.shape[1], n_model))
    present = np.zeros(n_model, dtype=bool)
    present[model_gene] = True
    aligned = Alignment(matrix, present, "var_names", n_duplicates=0).apply(counts)
    expected = (counts @ matrix).toarray()
    assert aligned.shape == expected.shape and aligned.dtype == np.float32
    np.testing.assert_array_equal(aligned.toarray(), expected)
    assert aligned.nnz == np.count_nonzero(expected)
