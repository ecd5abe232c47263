"""Query cells placed on the reference UMAP, and the exact k-nearest reference cells it rests on.

A query cell is placed beside the reference cells of its predicted label among its k nearest reference
cells in the model's embedding (:class:`LabelledPlacement`); a model built without its reference cells'
labels places it at their inverse-distance-weighted mean UMAP position, as scanpy's ``ingest`` does
(:func:`place_on_umap`), which puts a cell whose neighbours span two clusters in the empty space between
them (docs/benchmarks/placement.md measures both). The search is
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


def no_reference_labels() -> np.ndarray:
    """The reference cells' labels of a model built before it stored them: none."""
    return np.zeros(0, dtype=np.int32)


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
    their nearest reference cells (``distances`` and ``indices`` as :meth:`NearestReference.neighbours` gives).

    scanpy ``ingest``'s placement, and this module's for a model without reference labels: when the
    neighbours span two clusters the cell lands in the empty space between them (docs/benchmarks/placement.md).
    """
    weights = 1.0 / np.maximum(np.asarray(distances, dtype=np.float64), 1e-6)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkd->nd", weights, np.asarray(reference_umap, dtype=np.float64)[indices])


def map_spacing(reference_umap: np.ndarray) -> np.ndarray:
    """Each reference cell's distance (N,) to its nearest other reference cell on the 2-D map."""
    from scipy.spatial import cKDTree  # a 2-D tree: exact and fast in two dimensions (not in 50)

    points = np.asarray(reference_umap, dtype=np.float64)
    if len(points) < 2:
        return np.ones(len(points))
    distances, _ = cKDTree(points).query(points, k=2)
    return distances[:, 1]


RADIUS = 0.5  # of the anchor's map spacing: within it, the anchor is the cell's nearest reference cell


class LabelledPlacement:
    """Query cells placed on the reference map beside reference cells of their own predicted label.

    A cell's anchor is its nearest reference cell (in the model's space) among its ``k`` nearest that
    carries the cell's predicted label, or, when none of them does, the nearest reference cell of that label
    anywhere. The cell is placed at the inverse-distance-weighted mean of the map positions of its
    neighbours of that label (``ingest``'s rule, restricted to the label), pulled back towards its anchor
    to at most ``RADIUS`` times the anchor's own spacing on the map (the distance to its nearest other
    reference cell). So a cell lies nearer its anchor than any other reference cell: on the map it sits
    in its label's cluster, never in the empty space between clusters, and its offset keeps the local
    order of the query cells (measured in docs/benchmarks/placement.md).
    """

    def __init__(
        self,
        reference_latent: np.ndarray,
        reference_umap: np.ndarray,
        reference_label: np.ndarray,
        radius: float = RADIUS,
    ):
        self.latent = np.asarray(reference_latent, dtype=np.float32)
        self.umap = np.asarray(reference_umap, dtype=np.float64)
        self.label = np.asarray(reference_label, dtype=np.intp)
        self.radius = radius * map_spacing(self.umap)  # inf: the same-label mean unbounded; 0: the anchor itself
        self._by_label: dict[int, tuple[np.ndarray, NearestReference]] = {}

    def _nearest_of_label(self, latent: np.ndarray, label: int) -> np.ndarray:
        """Index of the nearest reference cell of ``label`` for each row of ``latent`` (-1: none exists)."""
        if label not in self._by_label:
            members = np.flatnonzero(self.label == label)
            self._by_label[label] = (members, NearestReference(self.latent[members], 1) if len(members) else None)
        members, index = self._by_label[label]
        if index is None:
            return np.full(len(latent), -1, dtype=np.intp)
        return members[index.neighbours(latent)[1][:, 0]]

    def __call__(self, latent: np.ndarray, distances: np.ndarray, indices: np.ndarray, labels: np.ndarray):
        """Map coordinates (n x 2) of query cells with model coordinates ``latent``, their nearest reference
        cells (``distances``, ``indices``) and their predicted labels (class indices, as the reference's)."""
        labels = np.asarray(labels, dtype=np.intp)
        same = self.label[indices] == labels[:, None]
        weights = np.where(same, 1.0 / np.maximum(np.asarray(distances, dtype=np.float64), 1e-6), 0.0)
        anchor = indices[np.arange(len(indices)), same.argmax(axis=1)]
        lonely = np.flatnonzero(~same.any(axis=1))
        for label in np.unique(labels[lonely]):
            cells = lonely[labels[lonely] == label]
            found = self._nearest_of_label(np.asarray(latent)[cells], int(label))
            anchor[cells] = np.where(found >= 0, found, indices[cells, 0])
            weights[cells] = 0.0
        total = weights.sum(axis=1, keepdims=True)
        mean = np.einsum("nk,nkd->nd", weights / np.maximum(total, 1e-300), self.umap[indices])
        origin = self.umap[anchor]
        offset = np.where(total > 0, mean - origin, 0.0)
        length = np.linalg.norm(offset, axis=1)
        shrink = np.minimum(1.0, self.radius[anchor] / np.maximum(length, 1e-12))
        return origin + offset * shrink[:, None]


class UmapPlacement(NearestReference):
    """Query cells placed on the reference UMAP by their ``n_neighbors`` nearest reference cells (``place``):
    beside reference cells of their predicted label (:class:`LabelledPlacement`) when the model knows its
    reference cells' labels, else at their neighbours' weighted mean (:func:`place_on_umap`, models built before)."""

    def __init__(
        self,
        reference_latent: np.ndarray,
        reference_umap: np.ndarray,
        reference_label: np.ndarray | None = None,
        n_neighbors: int = UMAP_NEIGHBORS,
    ):
        super().__init__(reference_latent, n_neighbors)
        self.umap = reference_umap
        known = reference_label is not None and len(reference_label) == len(reference_umap)
        self.by_label = LabelledPlacement(reference_latent, reference_umap, reference_label) if known else None

    def __call__(self, latent: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """UMAP coordinates (n x 2) of query cells (:meth:`place`)."""
        return self.place(latent, labels)[0]

    def place(self, latent: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """UMAP coordinates (n x 2) of query cells with predicted class indices ``labels``, and the distances
        (n x k, ascending) and indices of the nearest reference cells they rest on (which the novelty score
        reuses)."""
        distances, indices = self.neighbours(latent)
        return self.position(latent, distances, indices, labels), distances, indices

    def position(self, latent, distances: np.ndarray, indices: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        """UMAP coordinates of cells whose nearest reference cells are already known."""
        distances, indices = distances[:, :UMAP_NEIGHBORS], indices[:, :UMAP_NEIGHBORS]
        if self.by_label is None or labels is None:
            return place_on_umap(self.umap, distances, indices)
        return self.by_label(latent, distances, indices, labels)


def faithfulness(
    reference_umap: np.ndarray, reference_label: np.ndarray, query_umap: np.ndarray, query_label: np.ndarray
) -> dict[str, float]:
    """How faithfully query cells sit on the reference map, two shares of the query's cells.

    ``label_agreement``: whose nearest reference cell on the map carries the cell's predicted label.
    ``in_void``: farther from every reference cell than 99% of reference cells are from their own nearest
    neighbour (the 99th percentile of :func:`map_spacing`), that is, in the empty space of the map.
    """
    from scipy.spatial import cKDTree

    distances, nearest = cKDTree(np.asarray(reference_umap, dtype=np.float64)).query(np.asarray(query_umap), k=1)
    void = np.quantile(map_spacing(reference_umap), 0.99)
    return {
        "label_agreement": float(np.mean(np.asarray(reference_label)[nearest] == np.asarray(query_label))),
        "in_void": float(np.mean(distances > void)),
    }
