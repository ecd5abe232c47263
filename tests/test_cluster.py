"""`annotate --scheduler ADDRESS`: blocks of cells annotated on the workers of a real dask.distributed
LocalCluster (2 worker processes on 127.0.0.1) give the streamed single-process run's answers."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import cellzoo
from runner.errors import UsageError
from runner.keys import ResultKeys
from tests.conftest import EXAMPLE, KANG, annotate_file, assert_one_line_error, data_file, run_cli, unpack_zoo_model

pytestmark = pytest.mark.slow
BATCH = 400  # Kang's 1,556 cells in 4 blocks: several in flight on the two workers


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


@pytest.mark.parametrize("model", ["pbmc", "pbmc@1.4.0"])
def test_cluster_run_equals_the_streamed_run(scheduler, tmp_path, model):
    """Kang 2018 streamed from its h5ad in blocks: on the cluster, the streamed run's answers for every cell, from
    the code the model carries (1.4.0's differs from the installed `model_zoo`: a pickled model ran a mixture of
    both on the workers and failed)."""
    runs = {}
    for name, options in (("streamed", {}), ("cluster", {"scheduler": scheduler})):
        out = tmp_path / f"{name}.h5ad"
        annotate_file(data_file(KANG), model, output=out, batch_size=BATCH, backed=True, **options)
        runs[name] = ad.read_h5ad(out)
    streamed, on_cluster = runs["streamed"], runs["cluster"]
    keys = ResultKeys("pbmc")
    assert on_cluster.n_obs == streamed.n_obs > 2 * BATCH
    assert (on_cluster.obs[keys.predicted] == streamed.obs[keys.predicted]).all()
    for column in (keys.uncertainty, keys.novelty):
        np.testing.assert_allclose(on_cluster.obs[column], streamed.obs[column], atol=1e-6)
    np.testing.assert_allclose(on_cluster.obsm[keys.probabilities], streamed.obsm[keys.probabilities], atol=1e-6)
    assert on_cluster.uns["pbmc"]["params"]["scheduler"] == scheduler


def test_cli_scheduler_writes_the_output(scheduler, example_copy, tmp_path):
    out = tmp_path / "out.h5ad"
    done = run_cli("annotate", str(example_copy), "-m", "pbmc", "-o", str(out), "--scheduler", scheduler, "-q")
    assert done.returncode == 0, done.stderr
    assert out.is_file()


def test_unreachable_scheduler_is_a_usage_error():
    with pytest.raises(UsageError, match="cannot reach the dask scheduler"):  # port 9 (discard): nothing listens
        cellzoo.annotate(ad.read_h5ad(EXAMPLE), "pbmc", scheduler="tcp://127.0.0.1:9", copy=True)


def test_a_whole_query_model_is_refused_before_any_cluster(tmp_path):
    model = unpack_zoo_model("pbmc-scanvi-1.0.0", tmp_path / "scanvi")
    done = run_cli(
        "annotate", str(EXAMPLE), "-m", str(model), "-o", str(tmp_path / "o.h5ad"), "--scheduler", "tcp://127.0.0.1:9"
    )
    assert_one_line_error(done, 2, "maps the whole query")


def test_a_worker_that_cannot_load_the_model_leaves_no_folder_and_sweeps_those_of_dead_workers(tmp_path, monkeypatch):
    """What a worker unpacks goes again if the model fails to load, and folders of killed workers of this host go
    at the next unpack (atexit never runs in a killed process)."""
    import subprocess
    import tempfile

    from runner.cluster import WORKER_FOLDER, ShippedModel
    from runner.errors import ModelError
    from runner.files import owner_tag

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the worker's temporary folder
    ended = subprocess.Popen(["true"])
    ended.wait()
    dead = tmp_path / f"{WORKER_FOLDER}.{ended.pid}@{owner_tag().partition('@')[2]}.abc123"
    (dead / "model").mkdir(parents=True)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "MLmodel").write_text("flavors: {}\n")  # no gene list: read_model_info refuses it
    shipped = ShippedModel(broken)
    with pytest.raises(ModelError, match="no gene list"):
        shipped.load()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
