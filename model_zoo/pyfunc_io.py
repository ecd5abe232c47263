"""Saving a family's model as a standard MLflow model directory (shared by every family)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_zoo import contract

PACKAGE_DIR = Path(__file__).parent
GENES_ARTIFACT = "genes.txt"
HIERARCHY = "hierarchy"
# what a report draws (runner/report.py reads them by these names): the reference cells' map coordinates and
# labels (npz: ``umap`` N x 2 float32, ``label`` N strings) and each class's marker genes (model_zoo.markers)
REFERENCE_MAP, REFERENCE_MAP_FILE = "reference_map", "reference_map.npz"
MARKERS, MARKERS_FILE = "markers", "markers.json"


@dataclass
class Trained:
    """A trained model of a family whose weights are more than one npz: the weights (``genes``,
    ``classes``, ``to_arrays()``) and, in subclasses, the family's other objects."""

    weights: Any

    @property
    def genes(self) -> np.ndarray:
        return self.weights.genes

    @property
    def classes(self) -> np.ndarray:
        return self.weights.classes


def model_signature(genes, extra_params: dict[str, object] | None = None):
    """The model's MLflow signature.

    Inputs: one optional ``double`` column per model gene (named by the model's gene ids; an absent column is a
    missing gene) and the optional ``total_counts`` column (each cell's total over all its genes: MLflow drops
    the columns a signature does not name before ``predict``, so a caller with other genes sends their total
    here). Params: ``genes_present``, ``cell_totals`` and a family's ``extra_params`` (name -> default).
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    kinds = {str: "string", int: "long", float: "double", bool: "boolean"}
    specs = [
        ParamSpec(contract.GENES_PRESENT, "string", [], shape=(-1,)),
        ParamSpec(contract.CELL_TOTALS, "double", [], shape=(-1,)),
    ]
    options = contract.ANSWER_OPTIONS | (extra_params or {})
    specs += [ParamSpec(name, kinds[type(value)], value) for name, value in options.items()]
    columns = [ColSpec("double", str(gene), required=False) for gene in [*genes, contract.TOTAL_COUNTS]]
    return ModelSignature(inputs=Schema(columns), outputs=None, params=ParamSchema(specs))


def python_model_predict(model):
    """``predict(model_input, params)`` of a loaded pyfunc's own ``PythonModel``, past MLflow's input checks
    (the runner's CSR path: MLflow would check every element of ``params['cell_totals']`` and match a CSR
    matrix to the signature's columns); ``model.predict`` for other flavours."""
    wrapper = getattr(model, "_model_impl", None)
    python_model = getattr(wrapper, "python_model", None)
    if python_model is None:
        return model.predict
    return lambda model_input, params=None: python_model.predict(wrapper.context, model_input, params=params)


def load_ontology_ids(context) -> dict[str, str]:
    """Label -> ontology term id, from a saved model's ``labels`` artifact."""
    labels = json.loads(Path(context.artifacts["labels"]).read_text())
    return {name: entry.get("ontology_term_id", "") for name, entry in labels.items()}


def load_hierarchy(context) -> dict | None:
    """The model's levels and back-off terms (``hierarchy`` artifact; None for a model built without it)."""
    path = context.artifacts.get(HIERARCHY)
    return json.loads(Path(path).read_text()) if path else None


def load_arrays(context) -> dict[str, np.ndarray]:
    """The ``weights`` artifact (npz of plain arrays, no pickles)."""
    with np.load(context.artifacts["weights"], allow_pickle=False) as arrays:
        return dict(arrays)


def save_family_model(
    path: Path,
    weights,
    family_dir: Path,
    labels: dict,
    metadata: dict,
    extra_artifacts: dict[str, Path] | None = None,
    extra_params: dict[str, object] | None = None,
) -> None:
    """Save ``weights.to_arrays()`` (npz), the gene list ``weights.genes`` and the label table as artifacts
    of a models-from-code pyfunc.

    ``family_dir`` holds ``model_code.py`` (the pyfunc entry point) and ``requirements.txt`` (exact pins).
    The whole ``model_zoo`` package travels as a code path, so the model runs without cellzoo installed.
    ``extra_artifacts`` (name -> file or folder) are a family's other open-format files (an xgboost
    JSON booster, an scvi-tools model directory); ``extra_params`` are its run options with defaults.
    """
    import mlflow

    from model_zoo.ontology import class_hierarchy

    requirements = (family_dir / "requirements.txt").read_text().split()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez_compressed(tmp / "weights.npz", **weights.to_arrays())
        (tmp / GENES_ARTIFACT).write_text("\n".join(map(str, weights.genes)) + "\n")
        (tmp / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True))
        ids = {name: entry.get("ontology_term_id", "") for name, entry in labels.items()}
        hierarchy = class_hierarchy([str(c) for c in weights.classes], ids)
        (tmp / "hierarchy.json").write_text(json.dumps(hierarchy, indent=1))
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(family_dir / "model_code.py"),
            artifacts={
                name: str(tmp / f)
                for name, f in [
                    ("weights", "weights.npz"),
                    ("genes", GENES_ARTIFACT),
                    ("labels", "labels.json"),
                    (HIERARCHY, "hierarchy.json"),
                ]
            }
            | {name: str(p) for name, p in (extra_artifacts or {}).items()},
            code_paths=[str(PACKAGE_DIR)],
            pip_requirements=requirements,
            signature=model_signature(weights.genes, extra_params),
            metadata=metadata,
        )


def save_reference_summary(model_dir: Path, reference_umap: np.ndarray, reference_labels: np.ndarray, markers: dict):
    """Add the reference backdrop and the marker genes to a saved model directory, as artifacts of its pyfunc.

    Writes ``artifacts/reference_map.npz`` (``umap``: the reference cells' map coordinates, float32; ``label``:
    their classes) and ``artifacts/markers.json`` (:func:`model_zoo.markers.marker_genes`), and lists both in
    the MLmodel's ``python_function`` artifacts. A few tens of KB for thousands of reference cells; no
    expression is stored.
    """
    import yaml

    artifacts = Path(model_dir) / "artifacts"
    umap = np.asarray(reference_umap, dtype=np.float32)
    labels = np.asarray(reference_labels).astype(str)
    np.savez_compressed(artifacts / REFERENCE_MAP_FILE, umap=umap, label=labels)
    (artifacts / MARKERS_FILE).write_text(json.dumps(markers, indent=1))
    mlmodel = Path(model_dir) / "MLmodel"
    doc = yaml.safe_load(mlmodel.read_text())
    listed = doc["flavors"]["python_function"].setdefault("artifacts", {})
    for name, file in ((REFERENCE_MAP, REFERENCE_MAP_FILE), (MARKERS, MARKERS_FILE)):
        listed[name] = {"path": f"artifacts/{file}", "uri": file}
    mlmodel.write_text(yaml.safe_dump(doc, sort_keys=False))
