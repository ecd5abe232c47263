"""Loading a model and invoking it in-process, streaming cells in batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from runner import keys
from runner.errors import ModelError

logger = logging.getLogger(__name__)

WORKER = Path(__file__).parent / "worker.py"  # run with the model environment's Python


@dataclass(frozen=True)
class ModelInfo:
    """What the runner needs to know of a model before running it (read from its MLmodel)."""

    path: Path
    metadata: dict
    genes: np.ndarray

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or self.path.name)

    @property
    def gene_id_type(self) -> str:
        return str(self.metadata.get("gene_id_type", "symbol"))

    @property
    def species(self) -> str:
        return str(self.metadata.get("species", "human"))

    @property
    def maps_whole_query(self) -> bool:
        """Whether the model must see the whole query in one ``predict`` call: its answer for a cell depends
        on the other cells (``scanvi``'s scArches surgery is fine-tuned on the query), so blocks mapped
        separately would be labelled by separately tuned models (metadata ``query_mapping``; models built
        before it existed: the ``scanvi`` family)."""
        mapping = self.metadata.get("query_mapping")
        return mapping == "whole_query" if mapping else self.metadata.get("family") == "scanvi"


def read_model_info(path: Path) -> ModelInfo:
    import yaml

    try:
        doc = yaml.safe_load((path / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ModelError(f"cannot read the MLmodel file of {path}: {err}") from err
    metadata = doc.get("metadata") or {}
    genes_file = path / str(metadata.get("genes_artifact", "artifacts/genes.txt"))
    if not genes_file.is_file():
        raise ModelError(
            f"model {path} has no gene list ({genes_file.name}); a cellzoo model lists its genes in its metadata"
        )
    genes = np.array(genes_file.read_text().split(), dtype=object)
    return ModelInfo(path=path, metadata=metadata, genes=genes)


MODEL_CODE = "model_zoo"  # the package every zoo model carries a copy of in its ``code/`` folder


def _model_code_modules(modules: dict) -> dict:
    return {name: m for name, m in modules.items() if name == MODEL_CODE or name.startswith(MODEL_CODE + ".")}


def load_pyfunc(info: ModelInfo):
    """The model's pyfunc, loaded in this process, running the code it carries. No bytecode is written from
    here on: a cached model's folder must stay identical to its archive (:func:`runner.cache.verify_cached`
    runs before every load).

    Every zoo model carries its own copy of ``model_zoo`` (the code it was built with). Python imports a
    package once per process, so a second model loaded in the same process (the Python API, a notebook
    comparing two versions) would run the first one's code: the ``model_zoo`` modules already imported are
    set aside while the model loads (it imports its own copy from its folder, which MLflow puts first on
    ``sys.path``) and put back afterwards (the model keeps the modules it imported); with none imported before
    (a command's single model), the model's own stay, for the imports its functions make when called."""
    import sys

    import mlflow

    sys.dont_write_bytecode = True
    before = _model_code_modules(sys.modules)
    for name in before:
        del sys.modules[name]
    try:
        # the runner has checked the model's pins itself (runner.envs.choose_manager): MLflow's own check
        # of the installed packages would take a second more
        return mlflow.pyfunc.load_model(str(info.path), suppress_warnings=True)
    except ModuleNotFoundError as err:
        raise ModelError(
            f"model {info.name} needs the Python package {err.name!r}, which this interpreter lacks: run it in its "
            "own environment (--env-manager auto, the default) or install the family's extra (pip install "
            "'cellzoo[scanvi]' or 'cellzoo[xgboost]')"
        ) from err
    except (ImportError, OSError, mlflow.exceptions.MlflowException) as err:
        raise ModelError(f"cannot load model {info.name} from {info.path}: {err}") from err
    finally:
        if before:
            for name in _model_code_modules(sys.modules):
                del sys.modules[name]
            sys.modules.update(before)


def run_params(present: np.ndarray, genes: np.ndarray, options: dict | None = None) -> dict | None:
    """The ``params`` of a ``predict`` call: the model genes the query has (when not all) and run options."""
    params = dict(options or {})
    if not present.all():
        params[keys.GENES_PRESENT] = [str(g) for g in genes[present]]
    return params or None


def predict_batch(model, counts: sp.csr_matrix, params: dict | None) -> pd.DataFrame:
    """Call the model's ``predict`` in this process on one block of cells; floats of the output kept as float32."""
    out = check_output(call_predict(model, counts, params), counts.shape[0])
    return out.astype({c: np.float32 for c in out.columns if out[c].dtype == np.float64})


def call_predict(model, counts, params: dict | None) -> pd.DataFrame:
    """``model.predict(counts, params=params)``, calling a ``PythonModel``'s own ``predict`` directly.

    MLflow's wrapper checks every element of a list parameter in Python: for ``params['cell_totals']``
    (one number a cell) that took 0.8 s per 10,000 cells, more than the model itself. The runner has
    checked the input and built the parameters itself; other pyfunc flavours go through MLflow as usual.
    """
    wrapper = getattr(model, "_model_impl", None)
    python_model = getattr(wrapper, "python_model", None)
    if python_model is None:
        return model.predict(counts, params=params)
    return python_model.predict(getattr(wrapper, "context", None), counts, params=params)


def predict_in_env(
    python: Path, info: ModelInfo, counts: sp.csr_matrix, totals: np.ndarray, params: dict | None, batch_size: int
) -> pd.DataFrame:
    """Run ``predict`` in the model's environment: the worker script, run by that environment's Python,
    reads the counts (and each cell's total over all the query's genes, ``params['cell_totals']`` of each
    batch) from an npz and writes the output as parquet (no JSON for data)."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cellzoo-worker-") as tmp:
        tmp = Path(tmp)
        counts = sp.csr_matrix(counts)
        np.savez(
            tmp / "counts.npz",
            data=counts.data,
            indices=counts.indices,
            indptr=counts.indptr,
            shape=np.asarray(counts.shape),
            cell_totals=np.asarray(totals, dtype=np.float64),
        )
        request = {
            "model": str(info.path),
            "counts": str(tmp / "counts.npz"),
            "output": str(tmp / "output.parquet"),
            "batch_size": batch_size,
            "params": params,
        }
        (tmp / "request.json").write_text(json.dumps(request))
        done = subprocess.run(
            [str(python), "-I", "-B", str(WORKER), str(tmp / "request.json")],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-10:])
            raise ModelError(f"model {info.name} failed in its environment ({python}):\n{tail}")
        return check_output(pd.read_parquet(tmp / "output.parquet"), counts.shape[0])


def check_output(result: pd.DataFrame, n_cells: int) -> pd.DataFrame:
    if len(result) != n_cells:
        raise ModelError(f"the model returned {len(result)} rows for {n_cells} cells")
    for column in (keys.LABEL, keys.UNCERTAINTY):
        if column not in result:
            raise ModelError(f"the model's output lacks the contract column {column!r}; columns: {list(result)[:8]}")
    return result
