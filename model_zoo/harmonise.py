"""Training on several studies: their labels harmonised through the Cell Ontology, and cap & fill.

Studies annotate at different depths: one labels "CD4-positive, alpha-beta T cell" where another tells
memory from naive CD4 T cells; one says "fibroblast" where another says "fibroblast of lung". The cells
are labelled by their Cell Ontology ids and :func:`harmonise` decides the classes:

1. **Depth.** A term used by some study whose ancestor is also used as a label (by any study) cannot be
   learned as such: the coarser label's cells may be of it. Its cells are rolled up to that ancestor
   (the coarsest one used), unless the coarser label holds fewer than ``coarse_share`` of all the cells
   under it: then those few coarsely labelled cells are dropped and the finer classes kept (two "smooth
   muscle cell" cells do not erase 31 bronchial and vascular smooth muscle cells).
2. **Rarity.** A term left with fewer than ``min_cells`` cells is dropped; it is listed in the model card
   as a type the model does not know (its cells should come out novel or coarser, not as a guess).

:func:`cap_and_fill` then draws each class's training cells so that no study dominates it by its size
(SpatialCore's "cap & fill"): up to ``cap`` cells a class, an equal share from each study, the share a
study cannot fill taken from the others.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from model_zoo.ontology import ontology_parser, term_lineage

DROPPED_RARE = "dropped: fewer cells than min_cells"
DROPPED_COARSE = "dropped: labelled coarser than the rest of its type"


def harmonise(
    terms: np.ndarray, sources: np.ndarray, *, min_cells: int = 10, coarse_share: float = 0.1
) -> tuple[np.ndarray, list[dict]]:
    """The class term of each cell ('' for a dropped cell) and a report row per original term.

    ``terms``: each cell's Cell Ontology id; ``sources``: its study. Report rows: ``ontology_term_id``,
    ``name``, ``cells`` (per source), ``fate`` (``class``, ``rolled up to <term>``, or dropped and why).
    """
    terms = np.asarray(terms, dtype=str)
    sources = np.asarray(sources, dtype=str)
    used, sizes = np.unique(terms, return_counts=True)
    size = dict(zip(used, sizes, strict=True))
    target = {t: t for t in used}
    fate = {t: "class" for t in used}
    for term in used:
        ancestors = [a for a in used if a != term and a in term_lineage(term)]
        if not ancestors:
            continue
        coarsest = min(ancestors, key=lambda a: len(term_lineage(a)))  # the fewest ancestors of its own
        under = sum(size[t] for t in used if coarsest in term_lineage(t))
        if size[coarsest] < coarse_share * under:
            fate[coarsest] = DROPPED_COARSE
        else:
            target[term] = coarsest
            fate[term] = f"rolled up to {coarsest} ({ontology_parser().get_term_label(coarsest)})"
    mapped = np.array([target[t] if fate[target[t]] != DROPPED_COARSE else "" for t in terms], dtype=object)
    classes, class_sizes = np.unique(mapped[mapped != ""], return_counts=True)
    rare = set(classes[class_sizes < min_cells])
    for term in used:
        if target[term] in rare and fate[term] != DROPPED_COARSE:
            fate[term] = DROPPED_RARE if target[term] == term else f"{fate[term]}, {DROPPED_RARE}"
    mapped[np.isin(mapped, sorted(rare))] = ""
    report = []
    for term in used:
        cells = pd.Series(sources[terms == term]).value_counts().sort_index()
        report.append(
            {
                "ontology_term_id": term,
                "name": ontology_parser().get_term_label(term) if term.startswith("CL:") else term,
                "cells": {str(k): int(v) for k, v in cells.items()},
                "fate": fate[term],
            }
        )
    return mapped, report


def cap_and_fill(labels: np.ndarray, sources: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """Indices of the cells to train on: for each class at most ``cap`` cells, ``cap / n_sources`` from
    each source holding the class, what a source cannot fill drawn from the others (at random, ``seed``)."""
    rng = np.random.default_rng(seed)
    labels, sources = np.asarray(labels), np.asarray(sources)
    chosen = []
    for label in np.unique(labels):
        pools = {s: rng.permutation(np.flatnonzero((labels == label) & (sources == s))) for s in np.unique(sources)}
        pools = {s: p for s, p in pools.items() if len(p)}
        taken = {s: 0 for s in pools}
        budget = min(cap, sum(len(p) for p in pools.values()))
        while sum(taken.values()) < budget:  # deal one cell at a time to the sources that still have some
            for s in sorted(pools, key=lambda s: taken[s]):
                if taken[s] < len(pools[s]) and sum(taken.values()) < budget:
                    taken[s] += 1
        chosen += [pools[s][: taken[s]] for s in pools]
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)
