"""The ``scanvi`` family as an MLflow pyfunc: scArches surgery of each query, kNN label transfer.

A saved model holds the scvi-tools model directory (``model.pt``, as scvi-tools saves it) and an npz
of plain arrays (reference latents, labels, UMAP); the pyfunc is this code (MLflow "models from code").
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from model_zoo import contract, novelty
from model_zoo.annotator import ZooAnnotator
from model_zoo.placement import UMAP_NEIGHBORS, UmapPlacement
from model_zoo.pyfunc_io import load_arrays, save_family_model
from model_zoo.scanvi import compute, scvi_model

FAMILY_DIR = Path(__file__).parent
SCVI_MODEL = "scvi_model"
# run options: device ('cpu' or 'cuda'), surgery epochs at most (0: the model's default), random seed
DEVICE, QUERY_EPOCHS, SEED = "device", "query_epochs", "seed"
RUN_OPTIONS = {DEVICE: "cpu", QUERY_EPOCHS: 0, SEED: 0}


class ScanviAnnotator(ZooAnnotator):
    """Loads the arrays once; ``predict`` maps each query batch by surgery and transfers labels."""

    def load_context(self, context) -> None:
        self.weights = compute.ScanviWeights.from_arrays(load_arrays(context))
        self.model_dir = Path(context.artifacts[SCVI_MODEL])
        self.load_labels(context)
        # one search serves both: the label transfer's k nearest and the UMAP placement's 15 nearest are the
        # first columns of the same ascending neighbours
        k = max(self.weights.n_neighbors, UMAP_NEIGHBORS, novelty.NEIGHBORS)
        self.index = UmapPlacement(
            self.weights.reference_latent, self.weights.reference_umap, self.weights.reference_label, k
        )

    def predict(self, context, model_input, params: dict | None = None):
        params = params or {}
        counts, present, totals = contract.as_model_matrix(model_input, self.weights.genes, params)
        latent, _ = scvi_model.map_query(
            self.model_dir,
            counts,
            present,
            self.weights,
            max_epochs=int(params.get(QUERY_EPOCHS) or self.weights.query_epochs),
            device=str(params.get(DEVICE) or "cpu"),
            seed=int(params.get(SEED) or 0),
        )
        distances, neighbours = self.index.neighbours(latent)
        k = self.weights.n_neighbors
        probs = compute.transfer_labels(
            distances[:, :k], neighbours[:, :k], self.weights.reference_label, len(self.weights.classes)
        )
        umap = self.index.position(latent, distances, neighbours, probs.argmax(axis=1))
        return self.answer(params, counts, present, totals, probs, latent, umap, distances, neighbours)


def save_model(path: Path, model, labels: dict, metadata: dict) -> None:
    """Write an MLflow model directory for a trained :class:`~model_zoo.scanvi.train.ScanviModel` at ``path``."""
    with tempfile.TemporaryDirectory() as tmp:
        scvi_dir = Path(tmp) / SCVI_MODEL
        model.save_scvi(scvi_dir)
        save_family_model(path, model.weights, FAMILY_DIR, labels, metadata, {SCVI_MODEL: scvi_dir}, RUN_OPTIONS)
