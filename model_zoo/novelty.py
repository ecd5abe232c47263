"""How unlike the reference a cell is: the novelty score every family writes beside its probabilities.

A probability over the reference's classes cannot say "none of these". The novelty score is the larger
of two ratios, each 1.0 at the value that only 0.5% of held-out reference cells exceed, so a cell above
1.0 is less like the reference than 99.5% of the reference's own cells (by either measure; about 1% of
reference-like cells exceed 1.0 in all):

* **distance**: the mean distance to the cell's ``NEIGHBORS`` nearest reference cells in the model's own
  space (PCA for ``linear`` and ``xgboost``, the scANVI latent space for ``scanvi``), divided by that of
  held-out reference cells. Finds a cell type the reference lacks within the reference's tissue.
* **composition**: the share of the cell's counts that falls in the model's genes, against the share the
  reference's cells have in the genes the query measured: a cell of another tissue spends its counts on
  genes the model does not use (a lung epithelial cell through a blood model), which a projection on the
  model's genes alone cannot see. The score is ``log(share ratio) / log(the reference's 0.5% quantile)``
  (only a lower share counts). It needs the cell's total count over all its genes: the runner passes it
  (``params['cell_totals']``); a DataFrame's total is taken over all its columns, so a DataFrame holding
  the model's genes alone gets no composition score.

Both scales are fitted at build time on reference cells held out of what the score compares them with
(:func:`calibrate`) and stored with the model's weights; no reference expression is stored.
"""

from __future__ import annotations

import numpy as np

NEIGHBORS = 10  # reference cells a query cell's distance is averaged over
QUANTILE = 0.995  # of held-out reference cells, at which each ratio is 1.0
CELL_TOTALS = "cell_totals"  # params entry: each cell's total count over all the genes of the query


def gene_share(counts, total: np.ndarray) -> np.ndarray:
    """Each gene's mean share of a cell's counts (``total``: each cell's count over all its genes). Cells
    weigh alike, so a reference mixing UMI counts with Smart-seq2 read counts (~100x larger) is not
    dominated by its deepest cells."""
    import scipy.sparse as sp

    shares = sp.diags(1.0 / np.maximum(np.asarray(total, dtype=np.float64), 1.0)) @ sp.csr_matrix(counts)
    return np.asarray(shares.mean(axis=0)).ravel()


def mean_distance(index, latent: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Mean distance of each cell to its ``NEIGHBORS`` nearest reference cells (``index``: a
    :class:`model_zoo.placement.NearestReference` of at least ``NEIGHBORS`` (+1 with ``exclude_self``))."""
    distances, _ = index.neighbours(latent)
    start = 1 if exclude_self else 0
    return distances[:, start : start + NEIGHBORS].mean(axis=1).astype(np.float64)


def share_ratio(in_model: np.ndarray, totals: np.ndarray, expected_share: float) -> np.ndarray:
    """Each cell's share of counts in the model's genes over the reference's (``expected_share``)."""
    share = np.asarray(in_model, dtype=np.float64) / np.maximum(np.asarray(totals, dtype=np.float64), 1.0)
    return share / max(float(expected_share), 1e-12)


def calibrate(held_distance: np.ndarray, held_share_ratio: np.ndarray) -> dict[str, float]:
    """The two scales from held-out reference cells: ``novelty_distance_scale`` (the distance's
    ``QUANTILE``) and ``novelty_share_floor`` (log of the share ratio's 1 - ``QUANTILE`` quantile, < 0)."""
    floor = float(np.quantile(np.log(np.maximum(held_share_ratio, 1e-9)), 1.0 - QUANTILE))
    return {
        "novelty_distance_scale": float(np.quantile(held_distance, QUANTILE)),
        "novelty_share_floor": min(floor, -1e-3),
    }


def score(distance: np.ndarray, ratio: np.ndarray | None, distance_scale: float, share_floor: float) -> np.ndarray:
    """The novelty score (see the module docstring); NaN for a model built without the scales."""
    if not np.isfinite(distance_scale):
        return np.full(len(distance), np.nan)
    out = np.asarray(distance, dtype=np.float64) / max(distance_scale, 1e-12)
    if ratio is not None and np.isfinite(share_floor):
        out = np.maximum(out, np.log(np.maximum(ratio, 1e-9)) / share_floor)
    return out


def held_out_scales(
    index, held_latent: np.ndarray, in_model: np.ndarray, totals: np.ndarray, expected_share: float, in_index: bool
) -> dict[str, float]:
    """:func:`calibrate` on held-out reference cells: their latent coordinates, their counts in the model's
    genes and in all genes; ``in_index``: the cells are among the ``index``'s own (a cell is not its own
    neighbour: the search skips it)."""
    distance = mean_distance(index, held_latent, exclude_self=in_index)
    return calibrate(distance, share_ratio(in_model, totals, expected_share))


def query_score(
    distances: np.ndarray, counts, totals: np.ndarray | None, gene_share: np.ndarray, present: np.ndarray, weights
) -> np.ndarray:
    """The novelty score of query cells from their ascending distances to the nearest reference cells, their
    counts in model gene order, their totals over all genes (or None) and the model's per-gene share of
    reference counts; ``weights`` carries the two scales (NaN in a model built before they existed)."""
    ratio = None
    if totals is not None:
        in_model = np.asarray(counts.sum(axis=1)).ravel()
        ratio = share_ratio(in_model, totals, float(np.asarray(gene_share)[present].sum()))
    return score(
        distances[:, :NEIGHBORS].mean(axis=1),
        ratio,
        float(getattr(weights, "novelty_distance_scale", np.nan)),
        float(getattr(weights, "novelty_share_floor", np.nan)),
    )
