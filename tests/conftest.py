"""Shared fixtures. Real data is read from ../shared/data (never copied); each test gets its own cache."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

# no call home from the tests or the servers and commands they start (runner/__init__.py does the same for cellzoo)
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
EXAMPLE = ROOT / "examples" / "celltypist_sample.h5ad"
BIN = Path(sys.executable).parent


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_file(relative: str) -> Path:
    path = DATA / relative
    if not path.exists():
        pytest.fail(f"real dataset {path} is missing: the tests read ../shared/data beside the project")
    return path


def truth_terms(dataset: str, labels) -> np.ndarray:
    """Ontology ids of a dataset's labels, from shared/data/labels_to_ontology.csv (``lung_cell_lines/*`` too)."""
    with open(DATA / "labels_to_ontology.csv") as fh:
        rows = list(csv.DictReader(fh))
    table = {(r["dataset"], r["label"]): r["ontology_term_id"] for r in rows}
    family = dataset.split("/")[0] + "/*"
    return np.array([table.get((dataset, str(label))) or table[(family, str(label))] for label in labels])


def probabilities(adata, key: str) -> pd.DataFrame:
    """``obsm[K_probabilities]`` (a plain array) as a DataFrame with the class names of ``uns[K]['classes']``."""
    return pd.DataFrame(
        np.asarray(adata.obsm[f"{key}_probabilities"]), index=adata.obs_names, columns=adata.uns[key]["classes"]
    )


def unpack_zoo_model(name_version: str, target: Path) -> Path:
    """A committed zoo archive (``models/NAME-VERSION.zip``) unpacked as a model directory."""
    import zipfile

    with zipfile.ZipFile(ROOT / "models" / f"{name_version}.zip") as zf:
        zf.extractall(target)
    return target


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an installed console script (``annotate`` or ``cellzoo``) as a user would."""
    program, *rest = args
    return subprocess.run(
        [str(BIN / program), *rest],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )


@pytest.fixture(autouse=True)
def model_cache(tmp_path_factory, monkeypatch) -> Path:
    """A fresh model cache per test (the environment variable reaches the CLI subprocesses too)."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CELLZOO_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def built_pbmc(tmp_path_factory) -> Path:
    """The pbmc recipe trained on the real SoupX reference through `cellzoo build`, once per session."""
    out = tmp_path_factory.mktemp("build")
    done = run_cli(
        "cellzoo", "build", "pbmc", "--reference", str(data_file("pbmc/soupx_pbmc4k.h5ad")), "--out", str(out), "-q"
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def example_copy(tmp_path) -> Path:
    """A copy of the bundled example query, so a test may annotate or break it freely."""
    return Path(shutil.copy(EXAMPLE, tmp_path / "query.h5ad"))


PBMC_VERSION = yaml.safe_load((ROOT / "registry.yaml").read_text())["models"]["pbmc"]["default"]
PBMC_ARCHIVE = ROOT / "models" / f"pbmc-{PBMC_VERSION}.zip"  # the zoo's default pbmc, as built from its recipe


def assert_cache_clean(cache: Path) -> None:
    """Nothing half-written: no model, no archive, no partial download left in the cache."""
    for part in ("models", "archives", "downloads"):
        left = list((cache / part).glob("*")) if (cache / part).exists() else []
        assert not left, f"left in the cache: {left}"


@pytest.fixture
def archive_server():
    """A real HTTP server on 127.0.0.1 serving the zoo's archives (see tests/servers.py), per test."""
    from tests.servers import ArchiveServer

    with ArchiveServer(PBMC_ARCHIVE.parent) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_tracking(tmp_path_factory):
    """A real `mlflow server` (SQLite backend, local artifacts) on 127.0.0.1, once per session (tests/servers.py)."""
    from tests.servers import MlflowServer

    with MlflowServer(tmp_path_factory.mktemp("mlflow"), BIN / "mlflow") as server:
        yield server


KANG = "pbmc/kang2018_pbmc.h5ad"


def ontology_accuracy_of(adata, dataset: str, label_column: str, key: str = "pbmc") -> float:
    """Cell Ontology-level accuracy of the predictions under ``key`` against the dataset's own labels
    (``Unassigned`` counted wrong, as the model cards and the README report it)."""
    from model_zoo.metrics import ontology_accuracy

    truth = truth_terms(dataset, adata.obs[label_column])
    return ontology_accuracy(adata.obs[f"{key}_ontology_term_id"].astype(str).to_numpy(), truth)


def log_normalised(adata, *, target_sum: float | None = 1e4, size_column: str = "nUMI"):
    """A copy of an AnnData of raw counts as many published files hold it: X = log1p(counts normalised per cell)
    made by scanpy (``normalize_total``, ``log1p``; float32), each cell's library size in ``obs[size_column]``,
    no layer or raw with the counts."""
    import scanpy as sc

    normalised = adata.copy()
    normalised.obs[size_column] = np.asarray(adata.X.sum(axis=1)).ravel()
    sc.pp.normalize_total(normalised, target_sum=target_sum)
    sc.pp.log1p(normalised)
    normalised.uns.pop("log1p", None)
    return normalised


def annotate_file(path, model: str, *, read_options=None, **options):
    """:func:`runner.annotate.annotate` with the run's options as keywords (routed to the option objects by
    name, as the Python API routes them); ``output``, ``table``, ``key_added`` and ``overwrite`` as they are."""
    from runner.annotate import annotate
    from runner.options import CheckOptions, ModelOptions, RunOptions, split_options

    direct = {k: options.pop(k) for k in ("output", "table", "key_added", "overwrite") if k in options}
    checks, run, source = split_options(options, (CheckOptions, RunOptions, ModelOptions))
    return annotate(path, model, read=read_options, checks=checks, run=run, source=source, **direct)


def start_slow_pull(archive_server, cache: Path, seconds: float, min_bytes: int = -1) -> subprocess.Popen:
    """`cellzoo models pull` of the zoo's pbmc archive, served slowly (``seconds``), as a running process,
    returned once its partial download exists with more than ``min_bytes`` (or after 60 s)."""
    archive_server.slow_seconds = seconds
    pinned = sha256(PBMC_ARCHIVE)
    ref = f"{archive_server.url('slow', PBMC_ARCHIVE.name)}#sha256={pinned}"
    pull = subprocess.Popen(
        [str(BIN / "cellzoo"), "models", "pull", ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    partial = cache / "downloads" / pinned / "archive.zip"
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > min_bytes) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pull


def expect_clean(action):
    """Run ``action``: ``None`` if it succeeds, the :class:`CellzooError` it raises (what the CLI turns into
    one line and exit 1 or 2); any other exception (a traceback for a user) fails the test."""
    import traceback

    from runner.errors import CellzooError

    try:
        action()
    except CellzooError as err:
        return err
    except Exception:  # the point: anything else is a traceback for a user
        pytest.fail(f"a traceback instead of a cellzoo error:\n{traceback.format_exc()}")
    return None


def assert_one_line_error(done: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """A CLI failure as the house wants it: exit ``code``, one line on stderr (``error: ...``), no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr and lines and lines[-1].startswith("error: "), done.stderr
    for needle in needles:
        assert needle in lines[-1], done.stderr


@pytest.fixture(scope="session")
def pbmc_dir(built_pbmc):
    """The pbmc model as `cellzoo build` makes it from this checkout (a directory)."""
    return next(p for p in built_pbmc.glob("pbmc-*") if p.is_dir())


@pytest.fixture(scope="session")
def kang_frame() -> pd.DataFrame:
    """Kang 2018's cells as a DataFrame of raw counts, its genes named by their symbols (Kang's `SYMBOL`)."""
    import anndata as ad

    kang = ad.read_h5ad(data_file(KANG))
    return pd.DataFrame(kang.X.toarray(), index=kang.obs_names, columns=kang.var["SYMBOL"].astype(str))


@pytest.fixture(scope="session")
def kang_answers(pbmc_dir, kang_frame) -> np.ndarray:
    """`annotate`'s answers for Kang (the runner: file in, obs[pbmc_predicted] out)."""
    import cellzoo

    kang = cellzoo.read(data_file(KANG))
    cellzoo.annotate(kang, str(pbmc_dir), gene_column="SYMBOL")
    assert list(kang.obs_names) == list(kang_frame.index)
    return kang.obs["pbmc_predicted"].astype(str).to_numpy()
