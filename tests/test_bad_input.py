"""Bad input: each gets its own message and exit code, no traceback, no output, and an untouched input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from tests.conftest import run_cli, sha256


def rewrite(path, change) -> None:
    adata = ad.read_h5ad(path)
    change(adata)
    adata.write_h5ad(path)


def normalise(adata) -> None:
    x = adata.X.astype(np.float32)
    x = sp.diags(1e4 / np.asarray(x.sum(axis=1)).ravel()) @ x
    adata.X = sp.csr_matrix(x).log1p()


def negate(adata) -> None:
    adata.X = -adata.X.astype(np.float32)


def rename_genes(adata) -> None:
    adata.var_names = [f"NOT_A_GENE_{i}" for i in range(adata.n_vars)]


def add_labels(adata) -> None:
    adata.obs["pbmc_predicted"] = "x"


CASES = {
    "normalised values": (normalise, 1, "non-integer values"),
    "negative values": (negate, 1, "negative values"),
    "no gene overlap": (rename_genes, 1, "only 0 of the model's"),
    "existing keys": (add_labels, 1, "already has obs['pbmc_predicted']"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_query_fails_cleanly(case, example_copy, tmp_path):
    change, code, message = CASES[case]
    rewrite(example_copy, change)
    before = sha256(example_copy)
    out = tmp_path / "out.h5ad"
    done = run_cli("annotate", str(example_copy), "-m", "pbmc", "-o", str(out))
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.h5ad*"))
    assert sha256(example_copy) == before


def test_normalised_values_point_to_the_counts_layer(example_copy, tmp_path):
    rewrite(example_copy, lambda a: (a.layers.__setitem__("counts", a.X.copy()), normalise(a)))
    done = run_cli("annotate", str(example_copy), "-m", "pbmc", "-o", str(tmp_path / "o.h5ad"))
    assert done.returncode == 1 and "--counts-layer" in done.stderr and "counts" in done.stderr
    fixed = run_cli(
        "annotate", str(example_copy), "-m", "pbmc", "-o", str(tmp_path / "o.h5ad"), "--counts-layer", "counts"
    )
    assert fixed.returncode == 0, fixed.stderr


def test_missing_file_is_bad_usage(tmp_path):
    done = run_cli("annotate", str(tmp_path / "nope.h5ad"), "-m", "pbmc")
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_a_file_that_is_not_h5ad(tmp_path):
    fake = tmp_path / "table.h5ad"
    fake.write_text("gene,cell1\nCD3E,4\n")
    before = sha256(fake)
    done = run_cli("annotate", str(fake), "-m", "pbmc", "-o", str(tmp_path / "o.h5ad"))
    assert done.returncode == 1 and "not an h5ad file" in done.stderr and "Traceback" not in done.stderr
    assert sha256(fake) == before and not (tmp_path / "o.h5ad").exists()


def test_truncated_h5ad(example_copy, tmp_path):
    data = example_copy.read_bytes()
    example_copy.write_bytes(data[: len(data) // 2])
    done = run_cli("annotate", str(example_copy), "-m", "pbmc", "-o", str(tmp_path / "o.h5ad"))
    assert done.returncode == 1 and "Traceback" not in done.stderr and not (tmp_path / "o.h5ad").exists()


def test_unknown_model_lists_names_and_closest(example_copy):
    done = run_cli("annotate", str(example_copy), "-m", "pbcm")
    assert done.returncode == 2 and "unknown model 'pbcm'" in done.stderr and "Did you mean 'pbmc'" in done.stderr
    version = run_cli("annotate", str(example_copy), "-m", "pbmc@9.9")
    assert version.returncode == 2 and "versions: 1.0.0, 1.1.0, 1.2.0" in version.stderr


def test_duplicate_gene_names_are_summed_with_a_warning(example_copy, tmp_path):
    """Two columns named CD3E (a gene split in two) annotate like one column holding their sum."""
    query = ad.read_h5ad(example_copy)
    gene = "CD3E"
    j = query.var_names.get_loc(gene)
    x = query.X.tocsc().astype(np.int64)
    col = x[:, j].toarray().ravel()
    half = col // 2
    split = sp.hstack([x, sp.csr_matrix(half[:, None])]).tocsr()
    split[:, j] = (col - half)[:, None]
    dup = ad.AnnData(X=sp.csr_matrix(split, dtype=np.float32), obs=query.obs)
    dup.var_names = [*query.var_names, gene]
    dup_path = tmp_path / "dup.h5ad"
    dup.write_h5ad(dup_path)
    done = run_cli("annotate", str(dup_path), "-m", "pbmc", "-o", str(tmp_path / "dup_out.h5ad"))
    assert done.returncode == 0, done.stderr
    assert "1 query genes share a name" in done.stderr and "CD3E" in done.stderr
    plain = run_cli("annotate", str(example_copy), "-m", "pbmc", "-o", str(tmp_path / "plain_out.h5ad"))
    assert plain.returncode == 0
    a, b = ad.read_h5ad(tmp_path / "dup_out.h5ad"), ad.read_h5ad(tmp_path / "plain_out.h5ad")
    np.testing.assert_allclose(a.obsm["pbmc_probabilities"], b.obsm["pbmc_probabilities"], atol=1e-5)
