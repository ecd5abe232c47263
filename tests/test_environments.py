"""A model runs in its own environment when the runner's interpreter does not meet its pins, and the
same model answers `mlflow models serve` requests with the contract's columns."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import anndata as ad
import numpy as np
import pytest
import requests

from tests.conftest import BIN, run_cli, unpack_zoo_model

pytestmark = pytest.mark.slow


@pytest.fixture
def old_sklearn_model(tmp_path):
    """The pbmc model with scikit-learn pinned one minor version below the runner's (1.9.1)."""
    model = unpack_zoo_model("pbmc-1.0.0", tmp_path / "pbmc-old-sklearn")
    requirements = model / "requirements.txt"
    pins = requirements.read_text()
    assert "scikit-learn==1.9.1" in pins
    requirements.write_text(pins.replace("scikit-learn==1.9.1", "scikit-learn==1.8.0"))
    return model


def annotate_timed(query, model, out, *options) -> tuple[ad.AnnData, str, float]:
    start = time.perf_counter()
    done = run_cli("annotate", str(query), "-m", str(model), "-o", str(out), *options)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    return ad.read_h5ad(out), done.stdout, seconds


def test_auto_builds_the_model_environment_once_and_matches_in_process(old_sklearn_model, example_copy, tmp_path):
    local, stdout, _ = annotate_timed(
        example_copy, old_sklearn_model, tmp_path / "local.h5ad", "--env-manager", "local"
    )
    assert "environment local" in stdout
    first, stdout, first_seconds = annotate_timed(example_copy, old_sklearn_model, tmp_path / "first.h5ad")
    assert "environment uv" in stdout and "built in" in stdout
    second, stdout, second_seconds = annotate_timed(example_copy, old_sklearn_model, tmp_path / "second.h5ad")
    assert "(reused)" in stdout
    print(
        f"\nisolated environment: first run {first_seconds:.1f} s (built), second run {second_seconds:.1f} s (reused)"
    )
    for isolated in (first, second):
        assert (isolated.obs["pbmc_predicted"] == local.obs["pbmc_predicted"]).all()
        np.testing.assert_allclose(isolated.obsm["pbmc_probabilities"], local.obsm["pbmc_probabilities"], atol=1e-6)
        np.testing.assert_allclose(isolated.obsm["X_pbmc_umap"], local.obsm["X_pbmc_umap"], atol=1e-5)
    environment = first.uns["pbmc"]["params"]["environment"]
    assert environment["manager"] == "uv" and not environment["reused"] and second_seconds < first_seconds
    # the environment has scikit-learn 1.8.0, bytecode compiled, and is listed and cleaned by `cellzoo envs`
    listed = run_cli("cellzoo", "envs", "list")
    assert environment["key"] in listed.stdout
    env_python = next(line.split()[-1] for line in listed.stdout.splitlines() if environment["key"] in line)
    version = subprocess.run(
        [f"{env_python}/bin/python", "-c", "import sklearn; print(sklearn.__version__, sklearn.__cached__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert version.startswith("1.8.0") and os.path.exists(version.split()[1])
    cleaned = run_cli("cellzoo", "envs", "clean")
    assert cleaned.returncode == 0 and environment["key"] in cleaned.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mlflow_models_serve_answers_invocations_with_contract_columns(tmp_path, example_copy):
    model = unpack_zoo_model("pbmc-1.0.0", tmp_path / "pbmc")
    genes = (model / "artifacts" / "genes.txt").read_text().split()
    query = ad.read_h5ad(example_copy)
    shared = [g for g in genes if g in query.var_names]
    rows = query[:5, shared].X.toarray().tolist()
    port = _free_port()
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            str(model),
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"},  # serve runs `uvicorn` from PATH
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            assert server.poll() is None, "mlflow models serve exited"
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        else:
            pytest.fail("mlflow models serve did not answer /ping within 180 s")
        answer = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"dataframe_split": {"columns": shared, "data": rows}}),
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert len(predictions) == 5
        columns = set(predictions[0])
        assert {"label", "uncertainty", "ontology_term_id", "prob:MNP", "emb:0", "umap:1"} <= columns
        assert all(0.0 <= p["uncertainty"] <= 1.0 for p in predictions)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
