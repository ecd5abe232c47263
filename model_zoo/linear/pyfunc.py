"""The ``linear`` family as an MLflow pyfunc: save the weights, load them once, predict.

A saved model holds no pickled objects: the weights are an npz of plain arrays, the labels a JSON
file, and the pyfunc is this code (MLflow "models from code", with ``model_zoo`` as a code path).
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from model_zoo import contract, novelty
from model_zoo.linear import compute
from model_zoo.placement import UmapPlacement
from model_zoo.pyfunc_io import load_arrays, load_hierarchy, load_ontology_ids, save_family_model

FAMILY_DIR = Path(__file__).parent


class LinearAnnotator(mlflow.pyfunc.PythonModel):
    """Loads ``weights.npz`` and ``labels.json`` once; ``predict`` follows the model contract."""

    # the contract's input is a CSR matrix or a DataFrame: no type-hint-based validation by MLflow
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.weights = compute.LinearWeights.from_arrays(load_arrays(context))
        self.ontology_ids = load_ontology_ids(context)
        self.hierarchy = load_hierarchy(context)
        self.placement = UmapPlacement(
            self.weights.reference_latent, self.weights.reference_umap, self.weights.reference_label
        )

    def predict(self, context, model_input, params: dict | None = None):
        counts, present, totals = contract.as_model_matrix(model_input, self.weights.genes, params)
        probs, latent, umap, distances = compute.predict_arrays(counts, present, self.weights, self.placement)
        score = novelty.query_score(distances, counts, totals, self.weights.count_share, present, self.weights)
        return contract.output_frame(
            self.weights.classes,
            probs,
            self.ontology_ids,
            latent,
            umap,
            novelty_score=score,
            hierarchy=self.hierarchy,
            params=params,
        )


def save_model(path: Path, weights: compute.LinearWeights, labels: dict, metadata: dict) -> None:
    """Write an MLflow model directory for ``weights`` at ``path``."""
    save_family_model(path, weights, family_dir=FAMILY_DIR, labels=labels, metadata=metadata)
