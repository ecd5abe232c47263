"""The default install: the runner and the default (``linear``) models need none of the libraries of the other
families (torch, scvi-tools, xgboost), which come with their extras or in a model's own environment."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from model_zoo.family import FamilyError, load_family
from runner.envs import EnvSpec, local_mismatches
from tests.conftest import EXAMPLE, ROOT

FAMILY_LIBRARIES = ("torch", "scvi", "xgboost", "lightning")


def test_default_model_annotates_without_the_families_libraries(tmp_path):
    """With torch, scvi-tools and xgboost made unimportable, `pbmc` still annotates the bundled example, and
    nothing on the way imported them."""
    blocked = ", ".join(repr(m) for m in FAMILY_LIBRARIES)
    code = (
        f"import sys\nfor m in ({blocked},): sys.modules[m] = None\n"  # `import m` now fails
        "import anndata, cellzoo\n"
        f"a = cellzoo.annotate(anndata.read_h5ad({str(EXAMPLE)!r}), 'pbmc', env_manager='local', copy=True)\n"
        "print(a.obs['pbmc_predicted'].nunique())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) >= 3  # the example's cells get several labels


@pytest.mark.parametrize(("family", "library"), [("xgboost", "xgboost"), ("scanvi", "scvi"), ("scanvi", "torch")])
def test_a_family_without_its_library_names_the_extra(monkeypatch, family, library):
    """`cellzoo build` of such a family stops before reading the reference, naming the extra to install."""
    monkeypatch.setitem(sys.modules, library, None)  # `import library` now fails, as in the default install
    with pytest.raises(FamilyError, match=rf"family '{family}' needs {library}.*pip install 'cellzoo\[{family}\]'"):
        load_family(family)


def test_xgboost_cpu_meets_a_models_xgboost_pin():
    """cellzoo[xgboost] installs xgboost-cpu (no NCCL) on Linux; a model pinned to xgboost of that version runs
    in this interpreter rather than in an environment of its own."""
    try:
        version = importlib.metadata.version("xgboost-cpu")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("xgboost-cpu is not the xgboost build installed here (macOS installs xgboost itself)")
    here = ".".join(map(str, sys.version_info[:2]))
    assert local_mismatches(EnvSpec((f"xgboost=={version}",), here)) == []
    assert local_mismatches(EnvSpec(("xgboost==0.1",), here)) == [f"xgboost {version} (model: 0.1)"]
