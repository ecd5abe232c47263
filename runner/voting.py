"""Majority voting over clusters of the query (CellTypist's refinement), at a million cells.

CellTypist over-clusters the query with Leiden on a neighbourhood graph of its own expression, then gives
every cell of a cluster the cluster's most frequent label. The graph is what runs out of memory at 1.5M
cells (CellTypist's issue #145). Here the clusters are k-means centroids in the model's embedding, which
every run already holds (``obsm['X_K']``: tens of floats a cell): mini-batch k-means keeps memory at the
embedding plus the centroids. The number of clusters grows with the square root of the number of cells
(:func:`n_clusters`): small clusters (tens of cells) on a small query, as CellTypist's over-clustering
gives, up to 1,000 clusters from 250,000 cells on. The centroids are fitted on at most 100 cells a cluster
(a seeded sample), then every cell goes to its nearest centroid: at a million cells the voting costs
about a tenth of the read (benchmarks/scale.py).
"""

from __future__ import annotations

import numpy as np

MIN_CLUSTER = 10  # a cluster's expected size never falls below this many cells
MAX_CLUSTERS = 1_000  # the cost of assigning every cell grows with the clusters
FIT_PER_CLUSTER = 100  # the centroids are fitted on at most this many cells a cluster
SEED = 0  # the sample and k-means are seeded: a run is reproducible


def n_clusters(n_cells: int) -> int:
    """The number of over-clusters of ``n_cells`` cells: 2 x sqrt(n), at least 10 cells each on average,
    at most 1,000 (1,500 cells: 77 clusters of 19; 10,000: 200 of 50; 1,000,000: 1,000 of 1,000)."""
    return max(1, min(round(2 * np.sqrt(n_cells)), n_cells // MIN_CLUSTER, MAX_CLUSTERS))


def over_cluster(embedding: np.ndarray) -> np.ndarray:
    """Over-cluster the cells of ``embedding`` (cells x dimensions) with mini-batch k-means; a cluster id
    per cell (int32)."""
    from sklearn.cluster import MiniBatchKMeans

    points = np.nan_to_num(np.asarray(embedding, dtype=np.float32))  # a model gives no NaN; never crash on one
    k = n_clusters(len(points))
    if k < 2:
        return np.zeros(len(points), dtype=np.int32)
    fit = points
    if len(points) > FIT_PER_CLUSTER * k:
        sample = np.random.default_rng(SEED).choice(len(points), FIT_PER_CLUSTER * k, replace=False)
        fit = points[np.sort(sample)]
    kmeans = MiniBatchKMeans(n_clusters=k, batch_size=4096, n_init=1, random_state=SEED, compute_labels=False)
    return kmeans.fit(fit).predict(points).astype(np.int32)


def vote(clusters: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The most frequent of ``labels`` in each cell's cluster (ties: the first label in sorted order), and
    the share of the cluster's cells that carry it."""
    names, codes = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    counts = np.zeros((int(clusters.max(initial=-1)) + 1, len(names)), dtype=np.int64)
    np.add.at(counts, (clusters, codes), 1)
    winner = counts.argmax(axis=1)
    share = counts[np.arange(len(counts)), winner] / np.maximum(counts.sum(axis=1), 1)
    return names[winner[clusters]], share[clusters].astype(np.float32)
