"""A corpus of broken inputs, built here: each its own message, a non-zero exit, nothing written, no traceback.

The CLI runs in-process (typer's CliRunner) to keep this fast; ``test_bad_input.py`` runs the real
console scripts for the h5ad cases.
"""

from __future__ import annotations

import gzip
import io
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from runner.cli import annotate_app, cellzoo_app
from tests.conftest import data_file

KANG_MTX = "formats/kang2018_pbmc_filtered_feature_bc_matrix"
GENES = ["CD3E", "CD3D", "CD8A", "CD4", "MS4A1", "CD79A", "LYZ", "CD14", "NKG7", "GNLY", "IL7R", "FCGR3A"]


def table(path: Path, values: np.ndarray, genes=GENES, sep=",") -> Path:
    """A cells x genes text table (gzipped when the name ends with .gz)."""
    lines = [sep.join(["", *genes])]
    lines += [sep.join([f"cell{i}", *map(str, row)]) for i, row in enumerate(values)]
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def counts(n_cells: int = 30) -> np.ndarray:
    return np.random.default_rng(0).poisson(3, size=(n_cells, len(GENES)))


def truncated(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def traversal_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("kang/matrix.mtx", "%%MatrixMarket matrix coordinate integer general\n1 1 0\n")
        zf.writestr("../../escape.txt", "gotcha")
    return path


def link_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("kang/matrix.mtx")
        info.external_attr = (0o120777) << 16  # a symbolic link
        zf.writestr(info, "/etc/passwd")
    return path


def hdf5_without_keys(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f["expression/values"] = np.ones((3, 4))
        f["expression/genes"] = np.array([b"CD3E", b"CD4", b"LYZ", b"NKG7"])
    return path


def mtx_without_barcodes(path: Path) -> Path:
    shutil.copytree(data_file(KANG_MTX), path)
    (path / "barcodes.tsv.gz").unlink()
    return path


def mtx_mismatched(path: Path) -> Path:
    shutil.copytree(data_file(KANG_MTX), path)
    lines = gzip.decompress((path / "barcodes.tsv.gz").read_bytes()).splitlines()
    (path / "barcodes.tsv.gz").write_bytes(gzip.compress(b"\n".join(lines[:-5]) + b"\n"))
    return path


def empty_mtx(path: Path) -> Path:
    path.mkdir()
    (path / "matrix.mtx").write_text("%%MatrixMarket matrix coordinate integer general\n3 0 0\n")
    (path / "barcodes.tsv").write_text("")
    (path / "features.tsv").write_text("ENSG00000198851\tCD3E\tGene Expression\n" * 3)
    return path


def two_folder_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for folder in ("a", "b"):
            zf.writestr(f"{folder}/matrix.mtx", "")
    return path


# name: (build the input in tmp_path, extra options, exit code, message)
CORPUS = {
    "truncated 10x h5": (
        lambda t: truncated(data_file("formats/kang2018_pbmc_filtered_feature_bc_matrix.h5"), t / "k.h5"),
        [],
        1,
        "could not be opened",
    ),
    "truncated gzipped table": (
        lambda t: truncated(table(t / "full.csv.gz", counts(2000)), t / "cut.csv.gz"),
        [],
        1,
        "could not be read as table",
    ),
    "truncated zip": (
        lambda t: truncated(traversal_zip(t / "full.zip"), t / "cut.zip"),
        [],
        1,
        "not a readable zip or tar archive",
    ),
    "wrong extension (csv named .h5ad)": (
        lambda t: table(t / "table.h5ad", counts()),
        [],
        1,
        "is not an h5ad file (not HDF5; its content looks like text)",
    ),
    "unknown extension": (lambda t: table(t / "table.xls", counts()), [], 1, "unknown input format"),
    "empty table": (lambda t: table(t / "empty.csv", counts(0)), [], 1, "holds an empty table"),
    "empty mtx": (lambda t: empty_mtx(t / "empty"), [], 1, "is empty (0 cells"),
    "NaN values": (lambda t: table(t / "nan.csv", np.where(counts() > 4, np.nan, counts())), [], 1, "NaN"),
    "negative values": (lambda t: table(t / "neg.csv", -counts()), [], 1, "negative values"),
    "text in the values": (
        lambda t: (t / "text.csv").write_text(",CD3E,CD4\ncell0,1,x\ncell1,2,3\n") and t / "text.csv",
        [],
        1,
        "not numbers",
    ),
    "all cells empty": (
        lambda t: table(t / "zeros.csv", 0 * counts()),
        ["--min-gene-overlap", "0"],
        1,
        "none of the 30 cells",
    ),
    "transposed by --orientation": (
        lambda t: table(t / "t.csv", counts()),
        ["--orientation", "genes-by-cells"],
        1,
        "looks transposed",
    ),
    "bad --orientation": (lambda t: table(t / "o.csv", counts()), ["--orientation", "sideways"], 2, "must be one of"),
    "HDF5 without the named keys": (
        lambda t: hdf5_without_keys(t / "x.h5"),
        ["--matrix-key", "matrix", "--var-key", "expression/genes"],
        1,
        "--matrix-key 'matrix' is not in x.h5",
    ),
    "HDF5 of unknown layout": (lambda t: hdf5_without_keys(t / "y.h5"), [], 1, "/expression/values"),
    "zip with a path traversal entry": (lambda t: traversal_zip(t / "evil.zip"), [], 1, "unsafe entry path"),
    "zip with a link": (lambda t: link_zip(t / "link.zip"), [], 1, "is a link"),
    "zip with two matrix folders": (lambda t: two_folder_zip(t / "two.zip"), [], 1, "should hold one 10x"),
    "mtx folder without barcodes": (lambda t: mtx_without_barcodes(t / "kang"), [], 1, "lacks barcodes.tsv"),
    "mtx files that do not belong together": (lambda t: mtx_mismatched(t / "kang"), [], 1, "do not belong together"),
    "several genomes": (
        lambda t: data_file("formats/scanpy_test_10x_data/1.2.0/multiple_genomes.h5"),
        [],
        2,
        "holds several genomes: another_genome, hg19_chr21",
    ),
    "unknown genome": (
        lambda t: data_file("formats/scanpy_test_10x_data/1.2.0/multiple_genomes.h5"),
        ["--genome", "mm10"],
        2,
        "its genomes: another_genome, hg19_chr21",
    ),
}


def invoke(app, *args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("case", list(CORPUS))
def test_broken_input_fails_cleanly_and_writes_nothing(case, tmp_path):
    build, extra, code, message = CORPUS[case]
    source = tmp_path / "in"
    source.mkdir()
    path = build(source)
    out = tmp_path / "out"
    out.mkdir()
    done = invoke(
        annotate_app, str(path), "-m", "pbmc", "-o", str(out / "o.h5ad"), "--table", str(out / "t.csv"), *extra
    )
    assert done.exit_code == code, done.output
    assert message in done.stderr, done.stderr
    assert "\nerror: " in f"\n{done.stderr}" and "Traceback" not in done.stderr
    assert not list(out.iterdir())
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()
    inspected = invoke(cellzoo_app, "inspect", str(path), "-m", "pbmc", *extra)
    assert inspected.exit_code != 0 and "Traceback" not in inspected.output, inspected.output
    assert not list(out.iterdir())


def test_duplicate_barcodes_are_made_unique_with_a_warning(tmp_path):
    path = table(tmp_path / "dup.csv", counts())
    text = path.read_text().replace("cell1,", "cell0,")
    path.write_text(text)
    done = invoke(annotate_app, str(path), "-m", "pbmc", "-o", str(tmp_path / "o.h5ad"), "--min-gene-overlap", "0")
    assert done.exit_code == 0, done.output
    assert "1 duplicate cell barcodes" in done.stderr
    import anndata as ad

    names = ad.read_h5ad(tmp_path / "o.h5ad").obs_names
    assert names.is_unique and "cell0-1" in names


def test_empty_cells_are_counted_and_unassigned(tmp_path):
    values = counts()
    values[:3] = 0
    path = table(tmp_path / "some_empty.tsv", values, sep="\t")
    done = invoke(annotate_app, str(path), "-m", "pbmc", "-o", str(tmp_path / "o.h5ad"), "--min-gene-overlap", "0")
    assert done.exit_code == 0, done.output
    assert "3 of 30 cells have zero counts" in done.stderr
    import anndata as ad

    result = ad.read_h5ad(tmp_path / "o.h5ad")
    assert (result.obs["pbmc_predicted"][:3] == "Unassigned").all() and (result.obs["pbmc_uncertainty"][:3] == 1).all()


def test_generic_hdf5_with_keys_reads_and_inspect_prints_the_tree(tmp_path):
    path = tmp_path / "custom.h5"
    values = counts()
    with h5py.File(path, "w") as f:
        f["data/matrix"] = values.T  # genes x cells
        f["data/genes"] = np.array([g.encode() for g in GENES])
        f["data/cells"] = np.array([f"c{i}".encode() for i in range(len(values))])
    keys = ["--matrix-key", "data/matrix", "--var-key", "data/genes", "--obs-key", "data/cells"]
    inspected = invoke(cellzoo_app, "inspect", str(path), "-m", "pbmc", *keys)
    assert "/data/matrix  (12, 30)" in inspected.stdout and "genes x cells" in inspected.stdout
    done = invoke(
        annotate_app, str(path), "-m", "pbmc", "-o", str(tmp_path / "o.h5ad"), "--min-gene-overlap", "0", *keys
    )
    assert done.exit_code == 0, done.output
    assert io.StringIO(done.stdout).read().count("cells       30") == 1
