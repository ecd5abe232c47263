"""A query stored as log1p-normalised values with its library sizes in obs (as Symphony, scanpy's PBMC 68k and
many published files are) is annotated from its exact counts, rebuilt; anything else non-integer is refused."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import cellzoo
from runner.errors import InputError
from runner.query import REBUILD_TOLERANCE
from runner.sources import AnnDataQuery
from tests.conftest import KANG, data_file, log_normalised, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kang() -> ad.AnnData:
    return ad.read_h5ad(data_file(KANG))


@pytest.fixture(scope="module")
def kang_labels(kang) -> np.ndarray:
    return cellzoo.annotate(kang, "pbmc", copy=True).obs["pbmc_predicted"].astype(str).to_numpy()


@pytest.mark.parametrize(
    ("target_sum", "size_column"),
    [(1e4, "nUMI"), (None, "total_counts"), (1e6, "n_counts")],  # CP10k (Symphony), scanpy's median, CPM
)
def test_rebuilt_counts_equal_the_original_counts(kang, target_sum, size_column):
    normalised = log_normalised(kang, target_sum=target_sum, size_column=size_column)
    query = AnnDataQuery(normalised, None)
    assert query.rebuild is not None and query.rebuild.column == size_column
    rebuilt = sp.vstack([query.rows(start, start + 500) for start in range(0, query.n_obs, 500)], format="csr")
    assert (rebuilt != sp.csr_matrix(kang.X)).nnz == 0
    assert query.rebuild.max_deviation <= REBUILD_TOLERANCE / 10  # 5e-7 measured: float32 log1p values
    assert "rebuilt" in query.counts and size_column in query.counts


def test_log_normalised_query_annotated_as_its_counts(kang, kang_labels, tmp_path):
    """Through the API and through the command, without a counts layer: the labels of the raw-count run."""
    normalised = log_normalised(kang)
    assert not normalised.layers and normalised.raw is None
    annotated = cellzoo.annotate(normalised, "pbmc", copy=True)
    assert (annotated.obs["pbmc_predicted"].astype(str).to_numpy() == kang_labels).all()
    counts = annotated.uns["pbmc"]["params"]["counts"]
    assert counts.startswith("X is log1p-normalised: raw counts rebuilt as expm1(X) * obs['nUMI'] / 10000")
    path, out = tmp_path / "symphony_like.h5ad", tmp_path / "out.h5ad"
    normalised.write_h5ad(path)
    done = run_cli("annotate", str(path), "-m", "pbmc", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "counts      warning: X is log1p-normalised" in done.stdout
    assert (ad.read_h5ad(out).obs["pbmc_predicted"].astype(str).to_numpy() == kang_labels).all()
    inspected = run_cli("cellzoo", "inspect", str(path), "-m", "pbmc")
    assert inspected.returncode == 0 and "counts from X is log1p-normalised" in inspected.stdout


def test_library_sizes_that_do_not_rebuild_integers_are_refused(kang):
    normalised = log_normalised(kang)
    normalised.obs["nUMI"] *= 1.37  # not the sizes the values were normalised by: nothing is rebuilt
    with pytest.raises(InputError, match=r"non-integer values .* log-transformed"):
        cellzoo.annotate(normalised, "pbmc")
    normalised = log_normalised(kang)
    normalised.obs.iloc[1200, normalised.obs.columns.get_loc("nUMI")] += 0.5  # a wrong size after the cells judged
    with pytest.raises(InputError, match=r"are not integers in cells 1000-1500.*--counts-layer"):
        cellzoo.annotate(normalised, "pbmc", batch_size=500)
    assert "pbmc_predicted" not in normalised.obs
