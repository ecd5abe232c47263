"""The scale benchmark's own tools: the synthetic query it annotates, and how it measures a run's memory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from benchmarks.scale import GB, evict, measure
from benchmarks.synthetic import write_synthetic
from tests.conftest import data_file

pytestmark = pytest.mark.slow


def test_synthetic_query_is_resampled_reference_cells(tmp_path):
    reference = ad.read_h5ad(data_file("pbmc/soupx_pbmc4k.h5ad"))
    ref_means = np.asarray(reference.X.mean(axis=0)).ravel()
    genes = reference.var_names[np.argsort(ref_means)[::-1][:500]]  # the 500 most expressed, in that order
    path = write_synthetic(tmp_path / "synthetic.h5ad", 3_000, chunk_size=700, genes=list(genes))

    query = ad.read_h5ad(path)
    assert query.shape == (3_000, 500)
    assert list(query.var_names) == list(genes)
    assert query.obs_names[0] == "syn-000000001"
    assert "synthetic" in query.uns["source"]
    assert np.array_equal(query.X.data, np.round(query.X.data)) and query.X.data.min() >= 1
    assert set(query.obs["Annotation"]) <= set(reference.obs["Annotation"])
    # Poisson(c) has mean c: each gene's mean count over the resampled cells follows the reference's
    means = np.asarray(query.X.mean(axis=0)).ravel()
    expected = ref_means[reference.var_names.get_indexer(genes)]
    assert np.corrcoef(np.log1p(means), np.log1p(expected))[0, 1] > 0.99
    assert means.sum() == pytest.approx(expected.sum(), rel=0.05)

    backed = ad.read_h5ad(path, backed="r")
    assert (backed.X[100:200] != query.X[100:200]).nnz == 0


def allocating(n_bytes: int) -> list[str]:
    return [sys.executable, "-c", f"import numpy, time; a = numpy.ones({n_bytes} // 8); time.sleep(0.5)"]


def test_measure_sees_a_child_allocate_memory():
    idle, busy = measure(allocating(0)), measure(allocating(500_000_000))
    assert idle.ok and busy.ok
    assert busy.peak_rss - idle.peak_rss > 0.4 * GB


def test_measure_kills_a_run_above_the_memory_limit():
    run = measure(allocating(2_000_000_000), mem_limit_gb=0.5)
    assert not run.ok and run.killed == "killed: > 0.5 GB"


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux fincore to see the page cache")
def test_evict_drops_the_query_from_the_page_cache(tmp_path):
    """Every measured run reads the query from disk: a file just read is resident, then no longer."""
    path = tmp_path / "query.bin"
    path.write_bytes(np.random.default_rng(0).bytes(32_000_000))

    def resident_pages() -> int:
        done = subprocess.run(["fincore", "-b", "-n", "-o", "PAGES", str(path)], capture_output=True, text=True)
        return int(done.stdout.split()[0])

    path.read_bytes()
    assert resident_pages() > 1000
    evict(path)
    assert resident_pages() == 0


def test_read_floors_read_every_stored_value(tmp_path):
    """The floor (h5py into reused buffers), anndata's streamed read and read_h5ad see the same values."""
    reference = ad.read_h5ad(data_file("pbmc/soupx_pbmc4k.h5ad"), backed="r")
    genes = list(reference.var_names[:2000])
    path = write_synthetic(tmp_path / "synthetic.h5ad", 25_000, chunk_size=5_000, genes=genes)
    x = ad.read_h5ad(path).X
    expected = float(x.data.sum()) + float(x.indices.sum())
    for name in ("raw", "stream"):
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.scale_tasks", name, str(path)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.splitlines()[-1]) == {"cells": 25_000, "checksum": expected}
