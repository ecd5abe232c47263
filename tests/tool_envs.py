"""The outside tools our outputs must open in, each in its own virtual environment.

`cellxgene` (the explorer) pins numpy 2.0.1 and `cellxgene-schema` pins anndata 0.11 and scipy < 1.16: neither
installs beside cellzoo. Each is built once with uv by the runner's own environment code
(:func:`runner.envs.ensure_env`: a folder per hash of the pins, a marker written last, a lock for concurrent
runs) under ``$CELLZOO_TOOLS_DIR`` (default ``/tmp/cellzoo-tools``), and reused by later runs.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

TOOLS = {
    "cellxgene": ("cellxgene==1.3.0",),  # the explorer, `cellxgene launch`
    "cellxgene-schema": ("cellxgene-schema==7.1.2",),  # the CELLxGENE Discover schema's validator
}
TOOLS_DIR_ENV = "CELLZOO_TOOLS_DIR"
NO_NETWORK = ("Failed to fetch", "error sending request", "dns error", "Connection refused", "Network is unreachable")


def tools_dir() -> Path:
    return Path(os.environ.get(TOOLS_DIR_ENV) or Path(tempfile.gettempdir()) / "cellzoo-tools")


def tool_python(name: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The Python of the tool's environment, built now (about 20-40 s) if it is not built yet.

    A test skips only where the package index cannot be reached and nothing is built (offline, outside CI);
    in CI (``CI`` set) and for any other failure it fails.
    """
    from runner.envs import EnvSpec, ensure_env
    from runner.errors import ModelError

    monkeypatch.setenv("CELLZOO_ENVS_DIR", str(tools_dir()))
    spec = EnvSpec(TOOLS[name], ".".join(map(str, sys.version_info[:2])))
    try:
        python, _ = ensure_env(spec, "uv")
    except ModelError as err:
        offline = any(sign in str(err) for sign in NO_NETWORK)
        if offline and not os.environ.get("CI"):
            pytest.skip(f"{name}'s environment cannot be built offline (no package index): {err}")
        raise
    return python
