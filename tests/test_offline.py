"""No network unless a download needs it: MLflow's telemetry is off in every process cellzoo starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# what MLflow reads to decide that it runs in CI or a test (then its telemetry is off anyway): left out here,
# so that only cellzoo's own setting can turn it off
CI_MARKERS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")


def telemetry_client_after(imports: str) -> str:
    """The MLflow telemetry client of a fresh interpreter that imports ``imports`` and then MLflow."""
    env = {k: v for k, v in os.environ.items() if k not in CI_MARKERS} | {"PYTHONPATH": str(ROOT)}
    code = f"{imports}\nimport mlflow.telemetry\nprint(mlflow.telemetry.get_telemetry_client())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "imports",
    [
        "import runner.cli",  # annotate, cellzoo
        "import cellzoo; cellzoo.annotate",  # the Python API
        "import model_zoo.build",  # python -m model_zoo.build (cellzoo build's training process)
        "import runpy, sys; sys.argv = ['x']; runpy.run_path('runner/worker.py')",  # the worker's module level
    ],
)
def test_mlflow_telemetry_is_off_in_cellzoo_processes(imports):
    assert telemetry_client_after(imports) == "None"


def test_without_cellzoo_mlflow_would_call_home():
    """The check above is meaningful: the same interpreter with plain MLflow starts a telemetry client."""
    assert telemetry_client_after("pass") != "None"
