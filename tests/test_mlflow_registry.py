"""`models:/` and `runs:/` references through a real `mlflow server` (SQLite backend) on 127.0.0.1."""

from __future__ import annotations

import zipfile

import anndata as ad
import pytest

from tests.conftest import PBMC_ARCHIVE, assert_cache_clean, run_cli, sha256

pytestmark = pytest.mark.slow
PBMC_SHA = sha256(PBMC_ARCHIVE)


@pytest.fixture(scope="module")
def mlflow_server(mlflow_tracking, tmp_path_factory):
    """The session's tracking server, holding the zoo's pbmc model as registered model 'pbmc' version 1."""
    import mlflow

    model_dir = tmp_path_factory.mktemp("zoo") / "pbmc"
    with zipfile.ZipFile(PBMC_ARCHIVE) as zf:
        zf.extractall(model_dir)
    server = mlflow_tracking
    client = mlflow.MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
    run = client.create_run(client.create_experiment("zoo"))
    client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("pbmc")
    client.create_model_version("pbmc", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    server.run_id = run.info.run_id
    return server


def test_models_uri_annotates_like_the_zoo_archive(mlflow_server, example_copy, tmp_path, model_cache):
    out = tmp_path / "out.h5ad"
    done = run_cli(
        "annotate", str(example_copy), "-m", "models:/pbmc/1", "-o", str(out), "--tracking-uri", mlflow_server.uri
    )
    assert done.returncode == 0, done.stderr
    model = ad.read_h5ad(out).uns["pbmc"]["model"]
    assert model["url"] == "models:/pbmc/1" and model["tracking_uri"] == mlflow_server.uri
    # cached as a deterministic zip of what MLflow's client gave: the zoo's files, plus the
    # `registered_model_meta` (name and version) that MLflow adds to a models:/ download
    with (
        zipfile.ZipFile(model_cache / "archives" / f"{model['sha256']}.zip") as got,
        zipfile.ZipFile(PBMC_ARCHIVE) as zoo,
    ):
        assert set(got.namelist()) - set(zoo.namelist()) == {"registered_model_meta"}
        assert all(got.read(name) == zoo.read(name) for name in zoo.namelist())


def test_runs_uri_and_tracking_uri_from_the_environment(mlflow_server, model_cache):
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri}
    done = run_cli("cellzoo", "models", "pull", f"runs:/{mlflow_server.run_id}/model", env=env)
    assert done.returncode == 0, done.stderr
    assert PBMC_SHA in done.stdout  # the same files, packed deterministically: the zoo archive's sha256
    missing = run_cli("cellzoo", "models", "pull", "models:/pbmc/7", env=env)
    assert missing.returncode == 1 and "could not download models:/pbmc/7" in missing.stderr
    assert "Traceback" not in missing.stderr
    offline = run_cli("cellzoo", "models", "pull", "models:/pbmc/1", env={**env, "CELLZOO_OFFLINE": "1"})
    assert offline.returncode == 1 and "offline" in offline.stderr


def test_models_uri_needs_a_tracking_server(model_cache, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    done = run_cli("cellzoo", "models", "pull", "models:/pbmc/1")
    assert done.returncode == 2 and "--tracking-uri" in done.stderr
    assert_cache_clean(model_cache)
