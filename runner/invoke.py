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


def load_pyfunc(info: ModelInfo):
    import mlflow

    try:
        return mlflow.pyfunc.load_model(str(info.path))
    except (ImportError, OSError, mlflow.exceptions.MlflowException) as err:
        raise ModelError(f"cannot load model {info.name} from {info.path}: {err}") from err


def predict_in_batches(
    model, counts: sp.csr_matrix, present: np.ndarray, genes: np.ndarray, batch_size: int
) -> pd.DataFrame:
    """Call ``model.predict`` on ``batch_size`` cells at a time; one output row per cell."""
    from tqdm.auto import tqdm

    params = {keys.GENES_PRESENT: [str(g) for g in genes[present]]} if not present.all() else None
    frames = []
    starts = range(0, counts.shape[0], batch_size)
    for start in tqdm(starts, desc="annotate", unit="batch", disable=len(starts) < 2):
        out = model.predict(counts[start : start + batch_size], params=params)
        if len(out) != min(batch_size, counts.shape[0] - start):
            raise ModelError(
                f"the model returned {len(out)} rows for {counts[start : start + batch_size].shape[0]} cells"
            )
        frames.append(out)
    result = pd.concat(frames, ignore_index=True)
    for column in (keys.LABEL, keys.UNCERTAINTY):
        if column not in result:
            raise ModelError(f"the model's output lacks the contract column {column!r}; columns: {list(result)[:8]}")
    return result
