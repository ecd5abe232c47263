"""The ``xgboost`` family as an MLflow pyfunc: save the embedding and booster, load them once, predict.

No pickles: the embedding and calibration are an npz of plain arrays, the booster is xgboost's own
JSON format, the labels a JSON file, and the pyfunc is this code (MLflow "models from code").
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import xgboost as xgb

from model_zoo import contract
from model_zoo.annotator import ZooAnnotator
from model_zoo.placement import UmapPlacement
from model_zoo.pyfunc_io import load_arrays, save_family_model
from model_zoo.xgboost import compute

FAMILY_DIR = Path(__file__).parent
BOOSTER = "booster"
DEVICE = "device"  # run option: 'cpu' (default) or 'cuda'
RUN_OPTIONS = {DEVICE: "cpu"}


class XGBoostAnnotator(ZooAnnotator):
    """Loads ``weights.npz``, ``booster.json`` and ``labels.json`` once; ``predict`` follows the model contract."""

    def load_context(self, context) -> None:
        self.weights = compute.XGBoostWeights.from_arrays(load_arrays(context))
        self.booster = xgb.Booster(model_file=context.artifacts[BOOSTER])
        self.load_labels(context)
        self.placement = UmapPlacement(
            self.weights.reference_latent, self.weights.reference_umap, self.weights.reference_label
        )

    def predict(self, context, model_input, params: dict | None = None):
        counts, present, totals = contract.as_model_matrix(model_input, self.weights.genes, params)
        self.booster.set_param({"device": (params or {}).get(DEVICE) or "cpu"})
        probs, latent, umap, distances, indices = compute.predict_arrays(
            counts, present, self.weights, self.booster, self.placement
        )
        return self.answer(params, counts, present, totals, probs, latent, umap, distances, indices)


def save_model(path: Path, model: compute.XGBoostModel, labels: dict, metadata: dict) -> None:
    """Write an MLflow model directory for a trained model at ``path`` (the booster as xgboost JSON)."""
    with tempfile.TemporaryDirectory() as tmp:
        booster = Path(tmp) / "booster.json"
        model.booster.save_model(str(booster))
        save_family_model(path, model.weights, FAMILY_DIR, labels, metadata, {BOOSTER: booster}, RUN_OPTIONS)
