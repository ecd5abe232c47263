"""Pure compute of the ``linear`` family: numpy / scipy / scikit-learn over matrices, no AnnData.

The classifier is CellTypist's design (L2-regularised multinomial logistic regression on
log1p-normalised expression, with feature selection by the largest coefficients per class), with
three changes that were measured on real data (see the model card):

* features are log1p(CP10k) without per-gene scaling (scaling cost 0.07 accuracy across studies);
* genes the query lacks are imputed from a PCA of the reference, fitted by ridge regression on the
  genes the query has, instead of being read as zeros (0.67 -> 0.87 on Kang 2018);
* the library size of a query cell is estimated from the model genes it has, divided by the share of
  reference counts those genes carry, so a pre-filtered gene panel is normalised like the reference.

Probabilities are calibrated by temperature scaling on a held-out part of the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from model_zoo.novelty import NoveltyWeights
from model_zoo.placement import no_reference_labels

TARGET_SUM = 1e4  # counts per cell after normalisation (CP10k), as CellTypist and scanpy use


@dataclass(frozen=True)
class LinearWeights(NoveltyWeights):
    """Everything the family needs at prediction time, as plain arrays (stored as npz + json)."""

    genes: np.ndarray  # (G,) model gene names, in model_input column order
    classes: np.ndarray  # (K,) class labels
    coef: np.ndarray  # (K, G) logistic-regression coefficients on log1p(CP10k)
    intercept: np.ndarray  # (K,)
    temperature: float  # softmax temperature fitted on held-out reference cells
    count_share: np.ndarray  # (G,) share of all reference counts carried by each model gene
    pca_mean: np.ndarray  # (G,) mean log-expression of the reference
    pca_components: np.ndarray  # (G, P) orthonormal PCA loadings
    ridge: float  # ridge penalty used when projecting a query with missing genes
    reference_latent: np.ndarray  # (N, P) PCA coordinates of the reference cells
    reference_umap: np.ndarray  # (N, 2) UMAP coordinates of the reference cells
    reference_label: np.ndarray = field(default_factory=no_reference_labels)  # (N,) class per reference cell

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "genes": self.genes.astype(str),
            "classes": self.classes.astype(str),
            "coef": self.coef.astype(np.float32),
            "intercept": self.intercept.astype(np.float32),
            "temperature": np.float32(self.temperature),
            "count_share": self.count_share.astype(np.float32),
            "pca_mean": self.pca_mean.astype(np.float32),
            "pca_components": self.pca_components.astype(np.float32),
            "ridge": np.float32(self.ridge),
            "reference_latent": self.reference_latent.astype(np.float32),
            "reference_umap": self.reference_umap.astype(np.float32),
            "reference_label": np.asarray(self.reference_label, dtype=np.int32),
        } | self.arrays()

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LinearWeights:
        return cls(
            genes=np.asarray(arrays["genes"]).astype(str),
            classes=np.asarray(arrays["classes"]).astype(str),
            coef=np.asarray(arrays["coef"], dtype=np.float64),
            intercept=np.asarray(arrays["intercept"], dtype=np.float64),
            temperature=float(arrays["temperature"]),
            count_share=np.asarray(arrays["count_share"], dtype=np.float64),
            pca_mean=np.asarray(arrays["pca_mean"], dtype=np.float64),
            pca_components=np.asarray(arrays["pca_components"], dtype=np.float64),
            ridge=float(arrays["ridge"]),
            reference_latent=np.asarray(arrays["reference_latent"], dtype=np.float64),
            reference_umap=np.asarray(arrays["reference_umap"], dtype=np.float64),
            reference_label=np.asarray(arrays.get("reference_label", np.zeros(0)), dtype=np.int32),
            **NoveltyWeights.from_npz(arrays),
        )


class PcaSpace(Protocol):
    """What the log-normalised PCA embedding needs; :class:`LinearWeights` is one (``xgboost`` reuses it)."""

    count_share: np.ndarray  # (G,) share of all reference counts carried by each model gene
    pca_mean: np.ndarray  # (G,)
    pca_components: np.ndarray  # (G, P)
    ridge: float


def log_normalise(counts: sp.csr_matrix, library_size: np.ndarray, dtype=np.float64) -> sp.csr_matrix:
    """log1p(counts / library_size * 1e4), cell by cell; cells with no counts stay all zero."""
    scale = TARGET_SUM / np.maximum(np.asarray(library_size, dtype=np.float64), 1.0)
    out = sp.csr_matrix(counts, dtype=dtype, copy=True)
    out.data *= np.repeat(scale, np.diff(out.indptr))
    np.log1p(out.data, out=out.data)
    return out


def fit_logistic(x: sp.csr_matrix, y: np.ndarray, *, c: float, seed: int):
    """Multinomial L2 logistic regression (lbfgs), as CellTypist trains on modest references."""
    from sklearn.linear_model import LogisticRegression  # training only: prediction needs no scikit-learn

    return LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x, y)


def select_features(coef: np.ndarray, top_genes: int) -> np.ndarray:
    """CellTypist's feature selection: the union over classes of the genes with the largest |coef|."""
    top = np.argsort(-np.abs(coef), axis=1)[:, :top_genes]
    return np.unique(top.ravel())


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y_index: np.ndarray) -> float:
    """Temperature T > 0 minimising the negative log-likelihood of softmax(logits / T) on held-out cells."""
    import scipy.optimize  # training only

    def nll(log_t: float) -> float:
        p = softmax(logits / np.exp(log_t))
        return -float(np.mean(np.log(np.clip(p[np.arange(len(y_index)), y_index], 1e-12, None))))

    res = scipy.optimize.minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(res.x))


def fit_pca(log_expr: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the reference log-expression: (mean, components G x P, reference coordinates N x P)."""
    mean = log_expr.mean(axis=0)
    centred = log_expr - mean
    n_components = min(n_components, min(centred.shape) - 1)
    # exact SVD: deterministic up to sign, which is fixed so that each largest loading is positive
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:n_components].T
    signs = np.sign(components[np.argmax(np.abs(components), axis=0), np.arange(n_components)])
    components = components * signs
    return mean, components, centred @ components


def estimate_library_size(counts: sp.csr_matrix, present: np.ndarray, count_share: np.ndarray) -> np.ndarray:
    """Library size of each cell, estimated from the model genes the query has.

    The reference was normalised by each cell's total over all its genes. A query cell only shows us
    the present model genes, which carried ``count_share[present].sum()`` of the reference's counts,
    so its total over them is scaled up by that share.
    """
    share = float(count_share[present].sum())
    had = counts if present.all() else counts[:, present]
    return np.asarray(had.sum(axis=1)).ravel() / max(share, 1e-12)


def project(log_expr: np.ndarray, present: np.ndarray, weights: PcaSpace) -> np.ndarray:
    """PCA coordinates of query cells from the genes they have (ridge least squares).

    With every gene present and ``ridge`` small this is the usual PCA projection.
    """
    w = weights.pca_components[present]
    gram = w.T @ w + weights.ridge * np.eye(w.shape[1])
    had = log_expr if present.all() else log_expr[:, present]
    # (x - mean) @ w without the centred copy of x: one product of the expression with the loadings,
    # in the expression's precision (float32 at prediction)
    product = had @ w.astype(had.dtype, copy=False) - (weights.pca_mean[present] @ w).astype(had.dtype)
    return np.linalg.solve(gram, product.T).T.astype(had.dtype, copy=False)


def impute_missing(log_expr: np.ndarray, latent: np.ndarray, present: np.ndarray, weights: PcaSpace):
    """Fill the genes the query lacks with their PCA reconstruction from ``latent`` (``log_expr`` itself
    when it has every gene)."""
    missing = ~present
    if not missing.any():
        return log_expr
    out = log_expr.copy()
    out[:, missing] = latent @ weights.pca_components[missing].T + weights.pca_mean[missing]
    return out


def embed(counts: sp.csr_matrix, present: np.ndarray, space: PcaSpace) -> tuple[np.ndarray, np.ndarray]:
    """log1p(CP10k) expression (dense, n x G) and PCA coordinates (n x P) of raw counts in model gene order,
    in float32 (half the memory traffic of float64; probabilities agree within 1e-5)."""
    size = estimate_library_size(counts, present, space.count_share)
    log_expr = log_normalise(counts, size, np.float32).toarray()
    return log_expr, project(log_expr, present, space)


def predict_arrays(counts: sp.csr_matrix, present: np.ndarray, weights: LinearWeights, placement):
    """Probabilities (n x K), PCA embedding (n x P), UMAP (n x 2, by ``placement``, a
    :class:`model_zoo.placement.UmapPlacement`, beside reference cells of the most probable class) and the
    distances (n x k, ascending) and indices of the nearest reference cells for raw counts in model gene order."""
    log_expr, latent = embed(counts, present, weights)
    full = impute_missing(log_expr, latent, present, weights)
    logits = (full @ weights.coef.T.astype(full.dtype)).astype(np.float64) + weights.intercept
    probs = softmax(logits / weights.temperature)
    return probs, latent, *placement.place(latent, probs.argmax(axis=1))
