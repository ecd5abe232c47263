"""Query cells placed on the reference UMAP, and the exact k-nearest reference cells it rests on.

A query cell's UMAP position is the inverse-distance-weighted mean of the UMAP positions of its k
nearest reference cells in the model's embedding, as scanpy's ``ingest`` places cells. The search is
exact and plain numpy, so a model needs no scikit-learn at prediction (importing
``sklearn.neighbors`` took 0.6 s of every run).

The search avoids sorting every distance. The reference cells are dealt into ``n_blocks`` blocks
(block ``b`` holds cells ``b, b + n_blocks, ...``). For a query cell, the k smallest block minima are
k distinct reference cells, so its k-th nearest cell is no farther than the k-th smallest block minimum,
and every cell that near lies in one of those k blocks: the k nearest are found among the
k x ``block`` cells of those blocks alone. Measured on 10,000 cells x 2,150 reference cells x 50
dimensions, one core: 0.083 s, against 0.11 s for scikit-learn's brute-force search (docs/design.md).
"""

from __future__ import annotations

import numpy as np

UMAP_NEIGHBORS = 15  # reference cells a query cell's UMAP position is the weighted mean of (every family)
BLOCK = 16  # reference cells per block (8-32 measured alike; 16 the fastest)
CHUNK = 1000  # query cells per distance matrix (1000 x 2150 float32: 9 MB, within the cache)


class NearestReference:
    """The k nearest reference cells of query cells, exactly (``neighbours``)."""

    def __init__(self, reference_latent: np.ndarray, n_neighbors: int):
        latent = np.asarray(reference_latent, dtype=np.float32)
        n_cells = len(latent)
        if n_cells == 0:
            raise ValueError("the reference has no cells to place query cells by")
        self.k = min(n_neighbors, n_cells)
        self.block = max(1, min(BLOCK, n_cells // self.k))  # at least k blocks
        self.n_blocks = -(-n_cells // self.block)
        padded = np.zeros((self.n_blocks * self.block, latent.shape[1]), dtype=np.float32)
        padded[:n_cells] = latent
        self.latent = latent
        self.minus_twice_t = np.ascontiguousarray(-2.0 * padded.T)
        self.squared = (padded * padded).sum(axis=1)
        self.squared[n_cells:] = np.inf  # padding cells are never near; every block keeps a real cell

    def neighbours(self, latent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean distances (n x k, ascending) and indices of each query cell's k nearest reference cells."""
        latent = np.asarray(latent, dtype=np.float32)
        distances = np.empty((len(latent), self.k), dtype=np.float32)
        indices = np.empty((len(latent), self.k), dtype=np.intp)
        members = self.n_blocks * np.arange(self.block)
        for start in range(0, len(latent), CHUNK):
            query = latent[start : start + CHUNK]
            rows = slice(start, start + len(query))
            # squared distance less the query's own |q|^2, which does not change the ranking
            partial = query @ self.minus_twice_t
            partial += self.squared
            minima = partial.reshape(len(query), self.block, self.n_blocks).min(axis=1)
            blocks = np.argpartition(minima, self.k - 1, axis=1)[:, : self.k]
            candidates = (blocks[:, :, None] + members).reshape(len(query), -1)
            near = np.take_along_axis(partial, candidates, axis=1)
            best = np.take_along_axis(candidates, np.argpartition(near, self.k - 1, axis=1)[:, : self.k], axis=1)
            # their distances again from the differences: exact where a query cell sits on a reference cell,
            # which |q|^2 + |r|^2 - 2 q.r in float32 is not (off by ~0.03: a cell misplaced on the UMAP)
            difference = self.latent[best] - query[:, None, :]
            exact = np.sqrt(np.einsum("nkd,nkd->nk", difference, difference))
            order = np.argsort(exact, axis=1)
            distances[rows] = np.take_along_axis(exact, order, axis=1)
            indices[rows] = np.take_along_axis(best, order, axis=1)
        return distances, indices


def place_on_umap(reference_umap: np.ndarray, distances: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """UMAP coordinates (n x 2) of query cells: the inverse-distance-weighted mean of the UMAP positions of
    their nearest reference cells (``distances`` and ``indices`` as :meth:`NearestReference.neighbours` gives)."""
    weights = 1.0 / np.maximum(np.asarray(distances, dtype=np.float64), 1e-6)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkd->nd", weights, np.asarray(reference_umap, dtype=np.float64)[indices])


class UmapPlacement(NearestReference):
    """Query cells placed on the reference UMAP by their ``n_neighbors`` nearest reference cells (``__call__``)."""

    def __init__(self, reference_latent: np.ndarray, reference_umap: np.ndarray, n_neighbors: int = UMAP_NEIGHBORS):
        super().__init__(reference_latent, n_neighbors)
        self.umap = reference_umap

    def __call__(self, latent: np.ndarray) -> np.ndarray:
        """UMAP coordinates (n x 2) of query cells (:func:`place_on_umap`)."""
        return self.place(latent)[0]

    def place(self, latent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """UMAP coordinates (n x 2) of query cells and the distances (n x k, ascending) to the nearest
        reference cells they rest on (which the novelty score reuses)."""
        distances, indices = self.neighbours(latent)
        return place_on_umap(self.umap, distances, indices), distances
