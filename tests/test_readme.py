"""The README's commands are the ones that CI and users run: docs that cannot drift."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import anndata as ad

from tests.conftest import PBMC_ARCHIVE, ROOT


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)```", text, re.S)
    assert match, f"README has no '{marker}' block"
    return match.group(1).strip()


def test_ci_runs_exactly_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_block("install") in ci
    assert readme_block("test") in ci


def run_readme_block(marker: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a README block in ``cwd`` (with ``examples/`` linked in) as a user's shell would."""
    (cwd / "examples").symlink_to(ROOT / "examples")
    env_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    return subprocess.run(
        ["bash", "-ec", readme_block(marker)],
        cwd=cwd,
        env={"PATH": env_path, "CELLZOO_CACHE_DIR": str(cwd / "cache"), "HOME": str(cwd)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_readme_quickstart_annotates_the_bundled_example(tmp_path):
    done = run_readme_block("quickstart", tmp_path)
    assert done.returncode == 0, done.stderr
    adata = ad.read_h5ad(tmp_path / "annotated.h5ad")
    assert adata.obs["pbmc_predicted"].notna().all() and "X_pbmc_umap" in adata.obsm


def test_readme_lung_quickstart_answers_at_every_level(tmp_path):
    """The lung block, run from a project folder with ../shared beside it, as in a checkout."""
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    done = run_readme_block("quickstart-lung", project)
    assert done.returncode == 0, done.stderr
    adata = ad.read_h5ad(project / "lung.h5ad")
    assert {"immune", "epithelial", "endothelial", "stromal"} <= set(adata.obs["lung_compartment"].astype(str))
    for level in ("compartment", "lineage"):
        assert adata.obs[f"lung_{level}_ontology_term_id"].astype(str).str.startswith("CL:").mean() > 0.9
    assert "lung_novelty" in adata.obs and "capillary endothelial cell" in set(adata.obs["lung_predicted"].astype(str))


def test_readme_private_registry_commands(tmp_path):
    """The 'Running a private registry' block, on a model directory as `cellzoo build` writes it."""
    with zipfile.ZipFile(PBMC_ARCHIVE) as zf:
        zf.extractall(tmp_path / "build" / PBMC_ARCHIVE.stem)
    done = run_readme_block("private-registry", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "labpbmc" in done.stdout and (tmp_path / "lab" / "models" / "labpbmc-1.0.0.zip").is_file()
    assert ad.read_h5ad(tmp_path / "annotated.h5ad").obs["pbmc_predicted"].notna().all()


def readme_python(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"README has no '{marker}' python block"
    return match.group(1)


def test_readme_api_example_runs_in_a_notebook_like_process(tmp_path):
    """The API section's cell, run as a notebook would (from the project folder, a fresh interpreter)."""
    code = readme_python("api") + "\nassert adata.uns['pbmc']['gene_overlap']['present'] == 474\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "MPLBACKEND": "Agg", "CELLZOO_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "pbmc_predicted" in done.stdout and "'present': 474" in done.stdout
