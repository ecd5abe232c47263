"""The peers' own environments: CellTypist as its users run it, in a virtualenv of its own.

celltypist 1.7.1's default solver, ``LogisticRegression(multi_class="ovr")``, fails with scikit-learn >= 1.8
(which no longer accepts ``multi_class``), and cellzoo's environment has a newer scikit-learn. Rather than
running CellTypist in another configuration (SGD), the benchmarks give it the environment it supports:
``python -m venv`` + ``pip install celltypist==1.7.1 scikit-learn==1.7.2 pynndescent==0.6.0`` (pip's own
configuration, so local wheels are found; bytecode compiled), created once under ``$CELLZOO_BENCH_DIR`` (default
``/tmp/cellzoo-bench``) and reused. :func:`run_celltypist` hands it h5ad files and reads CSVs back
(``benchmarks/celltypist_peer.py``): nothing is pickled between the environments.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

logger = logging.getLogger("benchmarks.peers")

CELLTYPIST_VERSION = "1.7.1"
CELLTYPIST_SKLEARN = "1.7.2"  # the newest scikit-learn that celltypist 1.7.1's default solver runs on
# pynndescent 0.7 returns a sparse array without getnnz, which scanpy 1.11.5's neighbour graph calls: with it,
# CellTypist's majority voting (its over-clustering) fails from the size at which scanpy uses pynndescent on
PYNNDESCENT = "0.6.0"
PEER_SCRIPT = Path(__file__).with_name("celltypist_peer.py")


def bench_dir() -> Path:
    """Where the benchmarks keep what outlives a run (the peers' environments, cached models)."""
    return Path(os.environ.get("CELLZOO_BENCH_DIR", "/tmp/cellzoo-bench"))


def _env_python(env: Path) -> Path:
    return env / "bin" / "python"


def _installed(python: Path, package: str) -> str | None:
    if not python.exists():
        return None
    probe = f"from importlib.metadata import version; print(version({package!r}))"
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def celltypist_env() -> Path:
    """The python of CellTypist's environment, created on first use (a few minutes) and reused."""
    env = bench_dir() / "celltypist-env"
    python = _env_python(env)
    pinned = {"celltypist": CELLTYPIST_VERSION, "scikit-learn": CELLTYPIST_SKLEARN, "pynndescent": PYNNDESCENT}
    if all(_installed(python, package) == wanted for package, wanted in pinned.items()):
        return python
    logger.info("creating CellTypist's environment in %s (once; a few minutes)", env)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
    pins = [f"{package}=={wanted}" for package, wanted in pinned.items()]
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--compile", *pins], check=True)
    return python


def _written(adata: ad.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


class CellTypist:
    """CellTypist trained once on ``reference`` (log1p CP10k, ``obs['label']``) with ``celltypist.train(**train)``
    in its own environment (:meth:`train`), then run on queries (:meth:`annotate`)."""

    def __init__(self, work: Path, *, train: dict, majority_voting: bool, p_thres: float):
        self.work, self.train_options, self.majority_voting, self.p_thres = work, train, majority_voting, p_thres
        self.work.mkdir(parents=True, exist_ok=True)
        self.model = work / "celltypist_model.pkl"  # CellTypist's own format, read back only by its environment
        self.train_seconds = 0.0

    def _run(self, reference: ad.AnnData | None, queries: dict[str, ad.AnnData]) -> dict[str, pd.DataFrame]:
        names = {f"q{i}": name for i, name in enumerate(queries)}  # file names: the queries' names have spaces
        spec = {
            "model": str(self.model),
            "reference": str(_written(reference, self.work / "reference.h5ad")) if reference is not None else None,
            "queries": {key: str(_written(queries[n], self.work / f"{key}.h5ad")) for key, n in names.items()},
            "train": self.train_options,
            "majority_voting": self.majority_voting,
            "p_thres": self.p_thres,
            "out": str(self.work),
        }
        (self.work / "spec.json").write_text(json.dumps(spec))
        command = [str(celltypist_env()), str(PEER_SCRIPT), str(self.work / "spec.json")]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"CellTypist's run failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
        if reference is not None:
            self.train_seconds = json.loads((self.work / "seconds.json").read_text())["train"]
        tables = {}
        for key, name in names.items():
            table = pd.read_csv(self.work / f"{key}.csv", index_col=0, keep_default_na=False)
            table.index = queries[name].obs_names  # the same cells in order (the CSV's index is read back as text)
            tables[name] = table
            (self.work / f"{key}.h5ad").unlink()
        return tables

    def train(self, reference: ad.AnnData) -> CellTypist:
        self._run(reference, {})
        return self

    def annotate(self, queries: dict[str, ad.AnnData]) -> dict[str, pd.DataFrame]:
        """Per query, one row per cell: ``predicted_labels``, ``conf_score``, ``prob_match`` (and with voting
        ``majority_voting``, ``conf_score_voting``), ``genes`` (its features found / all)."""
        return self._run(None, queries)


def celltypist_version() -> str:
    """The version measured, for the reports."""
    return f"{CELLTYPIST_VERSION} (own environment, scikit-learn {CELLTYPIST_SKLEARN}, pynndescent {PYNNDESCENT})"


def unassigned_by_p_thres(prob_match: np.ndarray) -> np.ndarray:
    """CellTypist's own abstention: ``prob match`` mode left the cell 'Unassigned' (no class >= p_thres)."""
    return np.asarray(prob_match, dtype=str) == "Unassigned"
