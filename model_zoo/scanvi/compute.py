"""Pure compute of the ``scanvi`` family: numpy over latent coordinates, no AnnData, no scvi-tools.

Label transfer is the HLCA's (Sikkema et al. 2023, scArches ``weighted_knn_transfer``): the query
cell's ``k`` nearest reference cells in the scANVI latent space vote with weights
``exp(-d / (2 / std(d))**2)``, normalised to sum to 1; a class's probability is its weighted vote
share and the uncertainty is 1 - the winning share.

A query that lacks some of the model's genes is not simply zero-filled (what ``prepare_query_anndata``
does, and what the encoder then reads as no expression): its counts are scaled to the reference's
depth over the genes it has, and the missing genes are filled with the reference model's expected
counts given the genes it has (the decoder's expression at that depth), as the ``linear`` family
imputes them from its PCA. On Kang 2018 (652 of the 995 model genes) this took the accuracy of the
``pbmc-scanvi`` model from 0.77 (zeros) to 0.81.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from model_zoo.novelty import NoveltyWeights


@dataclass(frozen=True)
class ScanviWeights(NoveltyWeights):
    """What the family stores besides the scvi-tools model directory (an npz of plain arrays)."""

    genes: np.ndarray  # (G,) model gene names, in model_input column order (the scvi-tools model's genes)
    classes: np.ndarray  # (K,) class labels
    reference_latent: np.ndarray  # (N, L) scANVI latent means of the reference cells
    reference_label: np.ndarray  # (N,) class index of each reference cell
    reference_umap: np.ndarray  # (N, 2) UMAP coordinates of the reference cells
    n_neighbors: int  # k of the label transfer
    query_epochs: int  # surgery epochs at most (early stopping ends most runs sooner)
    count_share: np.ndarray  # (G,) share of all reference counts (over model genes) carried by each gene
    median_total: float  # median reference cell total over the model genes
    reference_batch: str  # a batch of the reference, to read a query through the reference model as is

    def to_arrays(self) -> dict[str, np.ndarray]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {name: np.asarray(value) for name, value in values.items() if value is not None}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ScanviWeights:
        values = {f.name: np.asarray(arrays[f.name]) for f in dataclasses.fields(cls) if f.name in arrays}
        values |= NoveltyWeights.from_npz(arrays)
        values["genes"], values["classes"] = values["genes"].astype(str), values["classes"].astype(str)
        values["n_neighbors"], values["query_epochs"] = int(values["n_neighbors"]), int(values["query_epochs"])
        values["median_total"], values["reference_batch"] = (
            float(values["median_total"]),
            str(values["reference_batch"]),
        )
        return cls(**values)


def scale_to_reference_depth(counts: sp.csr_matrix, present: np.ndarray, weights: ScanviWeights) -> np.ndarray:
    """Counts (dense) scaled so that each cell's total over the present genes is the reference's median."""
    target = weights.median_total * float(weights.count_share[present].sum())
    totals = np.asarray(counts[:, present].sum(axis=1)).ravel()
    return counts.toarray() * (target / np.maximum(totals, 1.0))[:, None]


def fill_missing(counts: np.ndarray, present: np.ndarray, expression: np.ndarray) -> np.ndarray:
    """Fill the absent genes with expected counts: ``expression`` (rows summing to 1) at the depth the
    present genes show."""
    depth = counts[:, present].sum(axis=1) / np.maximum(expression[:, present].sum(axis=1), 1e-12)
    out = counts.copy()
    out[:, ~present] = depth[:, None] * expression[:, ~present]
    return out


def select_genes(counts: sp.csr_matrix, highly_variable: np.ndarray, min_detection: float | None) -> np.ndarray:
    """Indices of the model's genes: the highly variable ones, and every gene detected in at least
    ``min_detection`` of the reference cells (``None``: the highly variable genes alone).

    HVGs alone miss the well-expressed genes that pre-filtered query panels keep (Kang 2018: 346 of its
    1,267 genes among 2,000 HVGs of the SoupX PBMC reference), and a gene the query lacks is read as
    zero by the scArches surgery.
    """
    chosen = np.asarray(highly_variable, dtype=bool).copy()
    if min_detection is not None:
        chosen |= np.asarray((counts > 0).mean(axis=0)).ravel() >= min_detection
    return np.flatnonzero(chosen)


def vote_weights(distances: np.ndarray) -> np.ndarray:
    """The HLCA / scArches neighbour weights, rows summing to 1 (n x k)."""
    std = np.std(distances, axis=1, keepdims=True)
    scale = (2.0 / np.maximum(std, 1e-12)) ** 2
    weights = np.exp(-distances / scale)
    total = weights.sum(axis=1, keepdims=True)
    uniform = np.full_like(weights, 1.0 / weights.shape[1])
    return np.where(total > 0, weights / np.maximum(total, 1e-300), uniform)


def transfer_labels(distances: np.ndarray, neighbours: np.ndarray, reference_label: np.ndarray, n_classes: int):
    """Per-class weighted vote shares (n x K) from the query cells' neighbours in the reference."""
    weights = vote_weights(distances)
    probs = np.zeros((distances.shape[0], n_classes))
    np.add.at(probs, (np.arange(distances.shape[0])[:, None], reference_label[neighbours]), weights)
    return probs
