"""Train a zoo model from a recipe and a reference h5ad: ``python -m model_zoo.build RECIPE --reference F``.

A recipe (``model_zoo/recipes/NAME.yaml``) is data: a family, a reference file and how to read its
labels, the label -> Cell Ontology table, the family's parameters, and cross-study queries to score.
The result is a standard MLflow model directory with a model card (``README.md``) inside it.
``cellzoo build`` runs this module in a subprocess (the runner never imports ``model_zoo``) and then
archives the directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from model_zoo import contract
from model_zoo.card import render_card
from model_zoo.metrics import expected_calibration_error, ontology_match

logger = logging.getLogger(__name__)

RECIPES_DIR = Path(__file__).parent / "recipes"
FAMILIES = {"linear": "model_zoo.linear"}  # family name -> package with train.train and pyfunc.save_model
UNASSIGNED_THRESHOLD = 0.5  # the runner's default, used for the Unassigned rate reported in the card
UNCERTAINTY_MEANING = (
    "1 - the calibrated probability of the predicted class (temperature scaling fitted on held-out "
    "reference cells); 0 = certain. Cells above the runner's --unassigned-threshold are 'Unassigned'."
)


class BuildError(Exception):
    """A recipe or reference that cannot be built; the message says what to fix."""


def load_recipe(name_or_path: str) -> tuple[dict, Path]:
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise BuildError(f"no recipe {name_or_path!r}; zoo recipes: {', '.join(known)} (or give a .yaml path)")
    recipe = yaml.safe_load(path.read_text())
    missing = [k for k in ("name", "version", "family", "reference", "labels") if k not in recipe]
    if missing:
        raise BuildError(f"recipe {path} lacks {', '.join(missing)}")
    if recipe["family"] not in FAMILIES:
        raise BuildError(f"recipe {path}: unknown family {recipe['family']!r}; families: {', '.join(FAMILIES)}")
    return recipe, path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_labelled(path: Path, label_column: str, keep: set[str] | None = None):
    """Raw counts (CSR), gene names and labels of an h5ad, dropping cells whose label is not in ``keep``."""
    import anndata as ad

    adata = ad.read_h5ad(path)
    if label_column not in adata.obs:
        raise BuildError(f"{path} has no obs column {label_column!r}; columns: {', '.join(adata.obs.columns)}")
    labels = adata.obs[label_column].astype(str).to_numpy()
    mask = np.isin(labels, sorted(keep)) if keep is not None else np.ones(len(labels), dtype=bool)
    return adata.X[mask].tocsr(), adata.var_names.to_numpy().astype(str), labels[mask]


def evaluate_query(model, model_genes: np.ndarray, path: Path, spec: dict) -> dict:
    """Ontology-level accuracy and ECE of a saved model on a labelled query from another study."""
    import pandas as pd

    counts, genes, labels = read_labelled(path, spec["label_column"], set(spec["labels"]))
    frame = pd.DataFrame.sparse.from_spmatrix(counts, columns=genes).sparse.to_dense()
    out = model.predict(frame)
    truth = np.array([spec["labels"][label] for label in labels])
    correct = np.array([ontology_match(p, t) for p, t in zip(out[contract.ONTOLOGY_TERM_ID], truth, strict=True)])
    confidence = 1.0 - out[contract.UNCERTAINTY].to_numpy()
    assigned = confidence >= 1.0 - UNASSIGNED_THRESHOLD
    return {
        "name": spec.get("name", path.name),
        "file": path.name,
        "file_sha256": sha256_file(path),
        "n_cells": len(labels),
        "model_genes_present": int(np.isin(model_genes, genes).sum()),
        # as the runner reports it by default: 'Unassigned' cells count as wrong
        "ontology_accuracy": round(float((correct & assigned).mean()), 4),
        "ontology_accuracy_no_threshold": round(float(correct.mean()), 4),
        "ontology_accuracy_assigned_only": round(float(correct[assigned].mean()), 4) if assigned.any() else None,
        "unassigned_fraction": round(float(1 - assigned.mean()), 4),
        "ece": round(expected_calibration_error(confidence, correct), 4),
    }


def build(recipe_ref: str, reference: Path, out_dir: Path) -> Path:
    """Train the recipe on ``reference`` and save ``out_dir/NAME-VERSION`` (an MLflow model directory)."""
    recipe, recipe_path = load_recipe(recipe_ref)
    family = importlib.import_module(FAMILIES[recipe["family"]] + ".train")
    pyfunc = importlib.import_module(FAMILIES[recipe["family"]] + ".pyfunc")
    ref = recipe["reference"]
    if not reference.is_file():
        raise BuildError(f"reference file {reference} does not exist")
    keep = set(recipe["labels"]) - set(ref.get("drop_labels", []))
    counts, genes, labels = read_labelled(reference, ref["label_column"], keep)
    logger.info("reference %s: %d cells, %d genes, %d classes", reference.name, *counts.shape, len(set(labels)))
    weights, report = family.train(counts, genes, labels, recipe.get("params"))

    target = out_dir / f"{recipe['name']}-{recipe['version']}"
    if target.exists():
        raise BuildError(f"{target} exists already; remove it or choose another --out")
    metadata = {
        "name": recipe["name"],
        "version": str(recipe["version"]),
        "family": recipe["family"],
        "species": recipe.get("species", ""),
        "organism_ontology_term_id": recipe.get("organism_ontology_term_id", ""),
        "tissue": recipe.get("tissue", ""),
        "tissue_ontology_term_id": recipe.get("tissue_ontology_term_id", ""),
        "description": " ".join(str(recipe.get("description", "")).split()),
        "gene_id_type": ref.get("gene_id_type", "symbol"),
        "genes_artifact": "artifacts/genes.txt",
        "n_genes": len(weights.genes),
        "labels": {c: recipe["labels"][c] for c in weights.classes},
        "input": "raw counts (non-negative integers), cells x model genes, in the order of genes.txt",
        "uncertainty": UNCERTAINTY_MEANING,
        "training_reference": {
            "file": reference.name,
            "sha256": sha256_file(reference),
            "source_url": ref.get("source_url", ""),
            "description": ref.get("description", ""),
            "licence": ref.get("licence", ""),
            "label_column": ref["label_column"],
            "dropped_labels": list(ref.get("drop_labels", [])),
            "n_cells": int(counts.shape[0]),
        },
        "training": {k: v for k, v in report.items() if not k.startswith("held_out")},
        "metrics": {"held_out": report["held_out"], "held_out_uncalibrated": report["held_out_uncalibrated"]},
        "recipe": recipe_path.name,
        "built": dt.date.today().isoformat(),
    }
    metadata = _plain(metadata)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{target.name}.") as tmp:
        staging = Path(tmp) / target.name
        pyfunc.save_model(staging, weights, metadata["labels"], metadata)
        metadata["metrics"]["cross_study"] = _evaluate(staging, weights.genes, reference.parent, recipe)
        _rewrite_metadata(staging, metadata)
        (staging / "README.md").write_text(render_card(metadata))
        staging.rename(target)  # the model directory appears whole or not at all
    return target


def _evaluate(model_dir: Path, genes: np.ndarray, data_dir: Path, recipe: dict) -> list[dict]:
    """Score the saved model (loaded as MLflow loads it) on the recipe's cross-study queries found."""
    import mlflow

    specs = [s for s in recipe.get("evaluation", []) if (data_dir / s["file"]).is_file()]
    if not specs:
        return []
    model = mlflow.pyfunc.load_model(str(model_dir))
    return [evaluate_query(model, genes, data_dir / s["file"], s) for s in specs]


def _plain(obj):
    """JSON/YAML-safe copy (numpy scalars and strings become Python ones)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _rewrite_metadata(model_dir: Path, metadata: dict) -> None:
    mlmodel = model_dir / "MLmodel"
    doc = yaml.safe_load(mlmodel.read_text())
    doc["metadata"] = _plain(metadata)
    mlmodel.write_text(yaml.safe_dump(doc, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_zoo.build", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="zoo recipe name (model_zoo/recipes/NAME.yaml) or a recipe .yaml path")
    parser.add_argument("--reference", required=True, type=Path, help="reference .h5ad with raw counts and labels")
    parser.add_argument("--out", type=Path, default=Path("build"), help="folder for the model directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        target = build(args.recipe, args.reference, args.out)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
