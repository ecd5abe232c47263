"""Pure compute of the ``xgboost`` family: numpy / scipy / xgboost over matrices, no AnnData.

The design CELLxGENE Annotate used: gradient-boosted trees (xgboost, ``hist``) on an embedding of
the cells rather than on genes. The embedding is the ``linear`` family's (log1p(CP10k) of the genes
selected by a logistic screen, PCA; a query lacking genes is projected from the genes it has), so a
query with another gene panel lands in the same coordinates. The trees see each cell's coordinates
divided by their length (cosine geometry): a shallower technology shrinks a cell towards the PCA
centre (Drop-seq cells at half the reference's length), which thresholds on raw coordinates misread
(accuracy on CellBench Drop-seq 0.36 raw, 0.94 normalised). Probabilities are the booster's softmax
with a temperature fitted on held-out reference cells.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import xgboost as xgb

from model_zoo.linear import compute as linear
from model_zoo.novelty import NoveltyWeights
from model_zoo.placement import no_reference_labels
from model_zoo.pyfunc_io import Trained

OBJECTIVE = "multi:softprob"


@dataclass(frozen=True)
class XGBoostWeights(NoveltyWeights):
    """The embedding and calibration of a model, as plain arrays (the booster is its own JSON file).

    Satisfies :class:`~model_zoo.linear.compute.PcaSpace`, so the linear family's embedding code runs on it.
    """

    genes: np.ndarray  # (G,) model gene names, in model_input column order
    classes: np.ndarray  # (K,) class labels, in the booster's class order
    temperature: float  # softmax temperature fitted on held-out reference cells
    count_share: np.ndarray  # (G,) share of all reference counts carried by each model gene
    pca_mean: np.ndarray  # (G,)
    pca_components: np.ndarray  # (G, P)
    ridge: float  # ridge penalty when projecting a query with missing genes
    reference_latent: np.ndarray  # (N, P) PCA coordinates of the reference cells
    reference_umap: np.ndarray  # (N, 2) UMAP coordinates of the reference cells
    reference_label: np.ndarray = dataclasses.field(default_factory=no_reference_labels)  # (N,) class per cell

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for field in dataclasses.fields(self):
            if getattr(self, field.name) is None:
                continue
            value = np.asarray(getattr(self, field.name))
            out[field.name] = value.astype(str) if value.dtype.kind in "OU" else value.astype(np.float32)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> XGBoostWeights:
        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in arrays:
                continue  # a model built before the field: its default (or default factory)
            value = np.asarray(arrays[field.name])
            if value.dtype.kind == "U":
                values[field.name] = value.astype(str)
            elif value.ndim == 0:
                values[field.name] = float(value)
            else:
                values[field.name] = value.astype(np.float64)
        return cls(**values)


@dataclass
class XGBoostModel(Trained):
    """A trained model: its weights and its booster."""

    booster: xgb.Booster | None = None


def tree_features(latent: np.ndarray) -> np.ndarray:
    """The booster's input: PCA coordinates scaled to unit length per cell (cells at the centre stay zero)."""
    return latent / np.maximum(np.linalg.norm(latent, axis=1, keepdims=True), 1e-12)


def booster_params(n_classes: int, params: dict, device: str = "cpu") -> dict:
    """xgboost training parameters: multi-class softmax trees, histogram method, on ``device``."""
    return {
        "objective": OBJECTIVE,
        "num_class": n_classes,
        "tree_method": "hist",
        "device": device,
        "max_depth": params["max_depth"],
        "eta": params["learning_rate"],
        "subsample": params["subsample"],
        "colsample_bytree": params["colsample_bytree"],
        "min_child_weight": params["min_child_weight"],
        "eval_metric": "mlogloss",
        "seed": params["seed"],
        "nthread": params["n_jobs"],
    }


def fit_booster(
    latent: np.ndarray, y_index: np.ndarray, eval_latent: np.ndarray, eval_y: np.ndarray, n_classes: int, params: dict
) -> xgb.Booster:
    """Boost up to ``n_rounds`` rounds, stopping when the log-loss of the evaluation cells stops improving.

    The booster returned is cut at its best round, so that a saved booster needs no extra state.
    """
    train = xgb.DMatrix(tree_features(latent), label=y_index)
    evaluation = xgb.DMatrix(tree_features(eval_latent), label=eval_y)
    booster = xgb.train(
        booster_params(n_classes, params, params.get("device", "cpu")),
        train,
        num_boost_round=params["n_rounds"],
        evals=[(evaluation, "calibration")],
        early_stopping_rounds=params["early_stopping_rounds"],
        verbose_eval=False,
    )
    return booster[: booster.best_iteration + 1]


def margins(booster: xgb.Booster, latent: np.ndarray) -> np.ndarray:
    """Per-class logits (n x K) of cells at PCA coordinates ``latent``."""
    return booster.predict(xgb.DMatrix(tree_features(latent)), output_margin=True)


def predict_arrays(
    counts: sp.csr_matrix, present: np.ndarray, weights: XGBoostWeights, booster: xgb.Booster, placement
) -> tuple[np.ndarray, ...]:
    """Probabilities (n x K), PCA embedding (n x P), UMAP (n x 2, by ``placement``, a
    :class:`model_zoo.placement.UmapPlacement`) and the distances (n x k, ascending) and indices of the nearest
    reference cells for raw counts in model gene order."""
    _, latent = linear.embed(counts, present, weights)
    probs = linear.softmax(margins(booster, latent) / weights.temperature)
    return probs, latent, *placement.place(latent, probs.argmax(axis=1))
