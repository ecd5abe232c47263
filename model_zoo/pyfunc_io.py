"""Saving a family's model as a standard MLflow model directory (shared by every family)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from model_zoo import contract

PACKAGE_DIR = Path(__file__).parent
GENES_ARTIFACT = "genes.txt"


def params_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(
        inputs=None,
        outputs=None,
        params=ParamSchema([ParamSpec(contract.GENES_PRESENT, "string", [], shape=(-1,))]),
    )


def save_family_model(
    path: Path,
    *,
    family_dir: Path,
    arrays: dict[str, np.ndarray],
    genes: np.ndarray,
    labels: dict,
    metadata: dict,
) -> None:
    """Save ``arrays`` (npz), the gene list and the label table as artifacts of a models-from-code pyfunc.

    ``family_dir`` holds ``model_code.py`` (the pyfunc entry point) and ``requirements.txt`` (exact pins).
    The whole ``model_zoo`` package travels as a code path, so the model runs without cellzoo installed.
    """
    import mlflow

    requirements = (family_dir / "requirements.txt").read_text().split()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez_compressed(tmp / "weights.npz", **arrays)
        (tmp / GENES_ARTIFACT).write_text("\n".join(map(str, genes)) + "\n")
        (tmp / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True))
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(family_dir / "model_code.py"),
            artifacts={
                name: str(tmp / f)
                for name, f in [
                    ("weights", "weights.npz"),
                    ("genes", GENES_ARTIFACT),
                    ("labels", "labels.json"),
                ]
            },
            code_paths=[str(PACKAGE_DIR)],
            pip_requirements=requirements,
            signature=params_signature(),
            metadata=metadata,
        )
