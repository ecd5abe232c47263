"""The README's commands are the ones that CI and users run: docs that cannot drift."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import anndata as ad

from tests.conftest import ROOT


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)```", text, re.S)
    assert match, f"README has no '{marker}' block"
    return match.group(1).strip()


def test_ci_runs_exactly_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_block("install") in ci
    assert readme_block("test") in ci


def test_readme_quickstart_annotates_the_bundled_example(tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    done = subprocess.run(
        ["bash", "-c", readme_block("quickstart")],
        cwd=tmp_path,
        env={"PATH": env_path, "CELLZOO_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    adata = ad.read_h5ad(tmp_path / "annotated.h5ad")
    assert adata.obs["pbmc_predicted"].notna().all() and "X_pbmc_umap" in adata.obsm
