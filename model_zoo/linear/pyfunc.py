"""The ``linear`` family as an MLflow pyfunc: save the weights, load them once, predict.

A saved model holds no pickled objects: the weights are an npz of plain arrays, the labels a JSON
file, and the pyfunc is this code (MLflow "models from code", with ``model_zoo`` as a code path).
"""

from __future__ import annotations

from pathlib import Path

from model_zoo import contract
from model_zoo.annotator import ZooAnnotator
from model_zoo.linear import compute
from model_zoo.placement import UmapPlacement
from model_zoo.pyfunc_io import load_arrays, save_family_model

FAMILY_DIR = Path(__file__).parent


class LinearAnnotator(ZooAnnotator):
    """Loads ``weights.npz`` and ``labels.json`` once; ``predict`` follows the model contract."""

    def load_context(self, context) -> None:
        self.weights = compute.LinearWeights.from_arrays(load_arrays(context))
        self.load_labels(context)
        self.placement = UmapPlacement(
            self.weights.reference_latent, self.weights.reference_umap, self.weights.reference_label
        )

    def predict(self, context, model_input, params: dict | None = None):
        counts, present, totals = contract.as_model_matrix(model_input, self.weights.genes, params)
        probs, latent, umap, distances, indices = compute.predict_arrays(counts, present, self.weights, self.placement)
        return self.answer(params, counts, present, totals, probs, latent, umap, distances, indices)


def save_model(path: Path, weights: compute.LinearWeights, labels: dict, metadata: dict) -> None:
    """Write an MLflow model directory for ``weights`` at ``path``."""
    save_family_model(path, weights, family_dir=FAMILY_DIR, labels=labels, metadata=metadata)
