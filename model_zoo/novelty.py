"""How unlike the reference a cell is: the novelty score every family writes beside its probabilities.

A probability over the reference's classes cannot say "none of these". The novelty score is the larger
of three ratios, each 1.0 at its threshold, so that a cell above 1.0 is novel:

* **distance**: the mean distance ``d`` to the cell's ``NEIGHBORS`` nearest reference cells in the model's
  own space (PCA for ``linear`` and ``xgboost``, the scANVI latent space for ``scanvi``), against how far
  apart reference cells sit where the cell lands: ``d / sqrt(s_class * s_local)``, where ``s_class`` is the
  value that 0.5% of the reference cells of the cell's most probable class exceed (each measured against
  the other reference cells) and ``s_local`` the mean of the same distance of its ``NEIGHBORS`` nearest
  reference cells; divided by the value of this ratio that 0.5% of reference cells exceed
  (:func:`local_distance_fit`). Cell types differ in how tight they are (T cells lie close together,
  monocytes and stromal cells far apart): with one scale for all (models built before it), a T cell subtype
  the reference lacks looked ordinary beside the spread of the others, and the loose types' own cells were
  flagged first (leave-one-class-out, median AUROC 0.42 on PBMC and 0.51 on lung with one scale; 0.82 and
  0.76 with the two local scales; docs/design.md). Finds a cell type the reference lacks within the
  reference's tissue.
* **composition**: the share of the cell's counts that falls in the model's genes, against the share the
  reference cells of its (probable) class have in the genes the query measured. A cell of another tissue
  spends its counts on genes the model does not use (a lung epithelial cell through a blood model), which
  a projection on the model's genes alone cannot see. Technical genes (``TECHNICAL``: mitochondrial,
  ribosomal, MALAT1, NEAT1, haemoglobin), whose share varies between protocols, are left out of both
  sides. The score is ``log(ratio) / log(floor)`` (only a lower share counts), the floor being the lower of
  the 0.5% quantile of held-out reference cells and ``COMPOSITION_BOUND``: within one study the share
  varies by a few percent, across studies by much more for the same cell type (measured: immune cells of
  other studies at 0.72-1.67 of it, non-immune lung cells at 0.39-0.54; docs/design.md).
* **markers**: the same shortfall over the most probable class's own marker genes (:func:`class_markers`,
  from the stored per-class shares, among the genes the query measured), 1.0 at ``MARKER_BOUND`` of the
  share that class's reference cells spend on them. A cell of another tissue can spend an ordinary share of
  its counts on the model's genes as a whole (Travaglini 2020's lung endothelial cells through ``pbmc``: 0.73
  of the share expected of a mononuclear phagocyte) but not on what makes its answer that class (LYZ,
  S100A8/9, CST3: 0.10); models built before it (``pbmc`` up to 1.4.0) carry the code without it.

A family whose space moves a whole study away from the reference (the scANVI latent space after scArches
surgery: another study's cells of the reference's own types land farther out than held-out reference cells)
scales the distance once more, by the value that 0.5% of the cells of another study of those types exceed
(``novelty_study_scale``, :func:`study_scale`; the recipe's ``novelty_calibration``, fitted at build time).

The composition needs each cell's total count over the query's genes (but the technical ones): the
runner passes it (``params['cell_totals']``, leaving out the genes the model names in its metadata
``cell_totals_exclude``); a DataFrame's total is taken over all its gene columns. Both scales and the
per-class shares are fitted at build time on reference cells held out of what the score compares them
with (:func:`held_out_scales`) and stored with the model's weights; no reference expression is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import numpy as np

NEIGHBORS = 10  # reference cells a query cell's distance is averaged over
QUANTILE = 0.995  # of held-out reference cells, at which each ratio is 1.0
COMPOSITION_BOUND = 0.6  # a cell with less than this share of its class's is novel, whatever the reference's spread
MARKER_GENES = 20  # genes per class in the marker shortfall (:func:`class_markers`)
MARKER_BOUND = 0.3  # a cell with less than this share of its class's counts in the class's markers is novel
CELL_TOTALS = "cell_totals"  # params entry: each cell's total count over the query's genes but TECHNICAL ones
# genes left out of the composition (human and mouse symbols): mitochondrial, ribosomal, MALAT1, NEAT1, haemoglobin
TECHNICAL = r"(?i)^(?:MT-|MTRNR2L|RP[SL]\d|RP[SL]P\d|MALAT1$|NEAT1$|HB[ABDGEMQZ]\d?$)"


@dataclass(frozen=True, kw_only=True)
class NoveltyWeights:
    """The novelty score's fitted parts, which every family's weights carry (NaN / None: a model built before
    them); no reference expression. A family's weights dataclass derives from it and stores these fields in its
    npz under their own names (:meth:`arrays`, :meth:`from_npz`)."""

    novelty_distance_scale: float = np.nan  # :func:`calibrate` (before the local scales: the distance's only scale)
    novelty_share_floor: float = np.nan  # :func:`calibrate`
    class_gene_share: np.ndarray | None = None  # (K, G) :func:`class_gene_share`
    # :func:`local_distance_fit`
    novelty_reference_distance: np.ndarray | None = None  # (N,) each reference cell's distance to its nearest
    novelty_class_distance_scale: np.ndarray | None = None  # (K,)
    novelty_local_scale: float = np.nan
    novelty_study_scale: float = np.nan  # :func:`study_scale` (NaN: the distance is not calibrated on another study)

    def arrays(self) -> dict[str, np.ndarray]:
        """The novelty fields as float32 npz entries (the absent arrays left out)."""
        values = {f.name: getattr(self, f.name) for f in fields(NoveltyWeights)}
        return {name: np.asarray(value, dtype=np.float32) for name, value in values.items() if value is not None}

    @staticmethod
    def from_npz(arrays: dict[str, np.ndarray]) -> dict:
        """The novelty fields of an npz as keyword arguments (scalars as float, arrays as float64; a field the
        model was built without is left to its default)."""
        out = {}
        for f in fields(NoveltyWeights):
            if f.name in arrays:
                value = np.asarray(arrays[f.name])
                out[f.name] = float(value) if value.ndim == 0 else value.astype(np.float64)
        return out


def technical(genes) -> np.ndarray:
    """A mask of the ``TECHNICAL`` genes among ``genes`` (symbols)."""
    pattern = re.compile(TECHNICAL)
    return np.array([bool(pattern.match(str(g))) for g in genes], dtype=bool)


def gene_share(counts, total: np.ndarray) -> np.ndarray:
    """Each gene's mean share of a cell's counts (``total``: each cell's count over all its genes). Cells
    weigh alike, so a reference mixing UMI counts with Smart-seq2 read counts (~100x larger) is not
    dominated by its deepest cells."""
    import scipy.sparse as sp

    shares = sp.diags(1.0 / np.maximum(np.asarray(total, dtype=np.float64), 1.0)) @ sp.csr_matrix(counts)
    return np.asarray(shares.mean(axis=0)).ravel()


def composition_counts(counts, genes, columns) -> tuple:
    """What the composition is fitted on, from a reference's raw counts over all its ``genes``: the counts of
    the model's genes (``columns``) with the technical ones zeroed, and each cell's total over every
    non-technical gene."""
    import scipy.sparse as sp

    kept = ~technical(genes)
    totals = np.asarray(counts[:, kept].sum(axis=1)).ravel()
    return counts[:, columns] @ sp.diags(kept[columns].astype(np.float64)), totals


def class_gene_share(counts, total: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(classes x genes) :func:`gene_share` of each class's reference cells (``total``: over the non-technical
    genes); technical genes of ``counts`` should already be zero or left out by the caller."""
    labels = np.asarray(labels)
    return np.vstack([gene_share(counts[labels == c], np.asarray(total)[labels == c]) for c in classes])


def mean_distance(distances: np.ndarray) -> np.ndarray:
    """Each cell's mean distance to its ``NEIGHBORS`` nearest reference cells, from its ascending ``distances``
    to the nearest ones (:meth:`model_zoo.placement.NearestReference.neighbours`, at least ``NEIGHBORS``)."""
    return distances[:, :NEIGHBORS].mean(axis=1).astype(np.float64)


def log_share_ratio(in_model: np.ndarray, totals: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """log of each cell's share of counts in the model's genes over the share expected of it."""
    share = np.asarray(in_model, dtype=np.float64) / np.maximum(np.asarray(totals, dtype=np.float64), 1.0)
    return np.log(np.maximum(share / np.maximum(np.asarray(expected, dtype=np.float64), 1e-12), 1e-9))


def class_markers(share: np.ndarray, usable: np.ndarray, n: int = MARKER_GENES) -> list[np.ndarray]:
    """Each class's ``n`` marker genes among the ``usable`` ones, from the per-class gene shares the model stores
    (:func:`class_gene_share`): the genes a class spends much of its counts on and the other classes little,
    ranked by ``share * log(share / the largest other class's share)``."""
    share = np.asarray(share, dtype=np.float64)
    markers = []
    for i, own in enumerate(share):
        other = np.delete(share, i, axis=0).max(axis=0) if len(share) > 1 else np.zeros_like(own)
        score = np.full(len(own), -np.inf)
        keep = usable & (own > 0)
        score[keep] = own[keep] * np.log(own[keep] / np.maximum(other[keep], 1e-6))
        best = np.argsort(-score, kind="stable")[:n]
        markers.append(best[np.isfinite(score[best])])
    return markers


def log_marker_ratio(counts, totals: np.ndarray, classes: np.ndarray, share: np.ndarray, usable: np.ndarray):
    """log of each cell's share of counts in its most probable class's markers (:func:`class_markers` among the
    ``usable`` genes, those the query measured) over the share that class's reference cells spend on them."""
    share = np.asarray(share, dtype=np.float64)
    out = np.zeros(len(classes))
    for i, genes in enumerate(class_markers(share, usable)):
        rows = np.flatnonzero(classes == i)
        if len(rows) and len(genes):
            in_markers = np.asarray(counts[rows][:, genes].sum(axis=1)).ravel()
            out[rows] = log_share_ratio(in_markers, np.asarray(totals)[rows], share[i, genes].sum())
    return out


def local_distance_fit(index, latent: np.ndarray, label: np.ndarray, n_classes: int) -> dict:
    """The distance ratio's scales from the reference cells (``latent``, the ``index``'s own cells, with at least
    ``NEIGHBORS`` + 1 neighbours; ``label``: each cell's class index), each cell measured against the others
    (itself left out): ``novelty_reference_distance`` (N,), each cell's mean distance to its ``NEIGHBORS``
    nearest; ``novelty_class_distance_scale`` (K,), its ``QUANTILE`` over each class's cells (a class without
    cells: over all); ``novelty_local_scale``, the ``QUANTILE`` of the cells' own ratio (:func:`distance_ratio`)."""
    distances, neighbours = index.neighbours(latent)
    own = mean_distance(distances[:, 1:])
    by_class = np.full(n_classes, float(np.quantile(own, QUANTILE)))
    for c in np.unique(label):
        by_class[c] = float(np.quantile(own[label == c], QUANTILE))
    ratio = own / np.sqrt(np.maximum(by_class[label] * own[neighbours[:, 1 : NEIGHBORS + 1]].mean(axis=1), 1e-24))
    return {
        "novelty_reference_distance": own,
        "novelty_class_distance_scale": by_class,
        "novelty_local_scale": float(np.quantile(ratio, QUANTILE)),
    }


def distance_ratio(distances: np.ndarray, indices: np.ndarray, classes: np.ndarray, weights) -> np.ndarray:
    """``d / sqrt(s_class * s_local)`` of query cells (module docstring) from their ascending ``distances`` to
    the nearest reference cells, their ``indices`` and their most probable ``classes``, divided by
    ``weights.novelty_local_scale`` and by ``weights.novelty_study_scale`` where the model has one; a model built
    before the local scales: ``d`` over its one held-out scale."""
    mean = mean_distance(distances)
    own = getattr(weights, "novelty_reference_distance", None)
    if own is None or np.size(own) == 0:
        return mean / max(float(weights.novelty_distance_scale), 1e-12)
    local = np.asarray(own, dtype=np.float64)[indices[:, :NEIGHBORS]].mean(axis=1)
    by_class = np.asarray(weights.novelty_class_distance_scale, dtype=np.float64)[classes]
    ratio = mean / np.sqrt(np.maximum(by_class * local, 1e-24)) / max(float(weights.novelty_local_scale), 1e-12)
    study = float(getattr(weights, "novelty_study_scale", np.nan))
    return ratio / study if np.isfinite(study) else ratio


def study_scale(distance: np.ndarray) -> float:
    """The distance's scale from cells of another study of the reference's own types (their distance ratio,
    :func:`distance_ratio`, before any study scale): its ``QUANTILE``, never below 1 (a study scale only widens
    the reach the reference's own cells set). For a family whose space moves a whole study away from the
    reference (the scANVI latent space after surgery, docs/design.md), so that 0.5% of such cells are novel by
    their distance rather than 0.5% of the reference's."""
    return max(1.0, float(np.quantile(np.asarray(distance, dtype=np.float64), QUANTILE)))


def calibrate(held_distance: np.ndarray, held_log_ratio: np.ndarray) -> dict[str, float]:
    """The two scales from held-out reference cells: ``novelty_distance_scale`` (the distance's ``QUANTILE``)
    and ``novelty_share_floor`` (the lower of the log share ratio's 1 - ``QUANTILE`` quantile and
    log(``COMPOSITION_BOUND``))."""
    floor = float(np.quantile(held_log_ratio, 1.0 - QUANTILE))
    return {
        "novelty_distance_scale": float(np.quantile(held_distance, QUANTILE)),
        "novelty_share_floor": min(floor, float(np.log(COMPOSITION_BOUND))),
    }


def held_out_scales(
    held_distance: np.ndarray,
    held_counts,
    held_totals: np.ndarray,
    held_labels: np.ndarray,
    classes: np.ndarray,
    class_share: np.ndarray,
) -> dict[str, float]:
    """:func:`calibrate` on held-out reference cells: their mean distance to their ``NEIGHBORS`` nearest
    reference cells (:func:`mean_distance`, or :func:`local_distance_fit`'s for cells of the index, each
    measured against the others), their counts in the model's genes (technical ones zeroed), their totals over
    the non-technical genes and their labels."""
    expected = class_share.sum(axis=1)[np.searchsorted(classes, held_labels)]
    in_model = np.asarray(held_counts.sum(axis=1)).ravel()
    return calibrate(held_distance, log_share_ratio(in_model, held_totals, expected))


def report(scales: dict) -> dict[str, float]:
    """The scalar scales of a model (rounded) for its build report and card; the per-class arrays left out."""
    return {k: round(float(v), 4) for k, v in scales.items() if np.ndim(v) == 0}


def query_parts(
    distances: np.ndarray,
    indices: np.ndarray,
    counts,
    totals: np.ndarray | None,
    probabilities: np.ndarray,
    present: np.ndarray,
    technical_genes: np.ndarray,
    weights,
) -> dict[str, np.ndarray]:
    """The three ratios of query cells (``distance``, ``composition``, ``markers``; each 1.0 at its threshold)
    from their ascending distances to the nearest reference cells and the indices of those cells, their counts
    in model gene order, their totals over the non-technical genes (or None: distance alone), their class
    probabilities and the mask of the model's :func:`technical` genes; ``weights`` carries the scales and
    ``class_gene_share``. Empty for a model built before them."""
    share = getattr(weights, "class_gene_share", None)
    if share is None or not np.isfinite(float(getattr(weights, "novelty_distance_scale", np.nan))):
        return {}
    best = probabilities.argmax(axis=1)
    parts = {"distance": distance_ratio(distances, indices, best, weights)}
    if totals is not None:
        used = present & ~technical_genes
        in_model = np.asarray(counts[:, used].sum(axis=1)).ravel()
        expected = probabilities @ np.asarray(share)[:, used].sum(axis=1)
        parts["composition"] = log_share_ratio(in_model, totals, expected) / float(weights.novelty_share_floor)
        parts["markers"] = log_marker_ratio(counts, totals, best, share, used) / np.log(MARKER_BOUND)
    return parts


def combined(parts: dict[str, np.ndarray], n_cells: int) -> np.ndarray:
    """The novelty score: the largest of :func:`query_parts` (NaN for every cell when there are none)."""
    return np.maximum.reduce(list(parts.values())) if parts else np.full(n_cells, np.nan)
