"""Answers at every level of the Cell Ontology: the coarser levels of a model's classes, and back-off.

At build time (:func:`class_hierarchy`) a model's classes are placed in the Cell Ontology
(cellxgene-ontology-guide's offline copy): each class gets its term at each level of
``data/ontology_levels.csv`` (compartment: immune / epithelial / endothelial / stromal; lineage: T cell,
B cell lineage, mononuclear phagocyte, ...), and the candidate back-off terms are listed: the classes
themselves, their lineage terms, and the lowest common ancestors of two classes of one lineage. The
result is a small JSON artifact stored in the model, so that prediction needs no ontology.

At prediction (:func:`answers`, :func:`level_answers`) a term's probability is the summed probability of
the classes under it. A cell's answer is the most specific term whose probability reaches
``1 - unassigned_threshold``: its class when that is sure enough, else the common ancestor its
probability is split within (CD4 vs CD8 T cells -> mature alpha-beta T cell), never coarser than its
lineage; ``Unassigned`` when even that is in doubt, or when the cell is novel.
"""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

import numpy as np

LEVELS_TABLE = Path(__file__).parent / "data" / "ontology_levels.csv"
UNASSIGNED = "Unassigned"
# why a cell got its answer (the ``answer_kind`` column)
FINEST, COARSER, UNCERTAIN, NOVEL = "finest", "coarser", "uncertain", "novel"


def levels_table(path: Path = LEVELS_TABLE) -> list[dict[str, str]]:
    """The rows of the levels table (level, name, ontology_term_id), in order."""
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return list(csv.DictReader(lines))


@cache
def ontology_parser():
    """cellxgene-ontology-guide's offline Cell Ontology (build time and scoring only, never at prediction)."""
    from cellxgene_ontology_guide.ontology_parser import OntologyParser

    return OntologyParser()


@cache
def term_lineage(term: str) -> frozenset[str]:
    """The term and its ancestors ({term} alone for a term that is not a Cell Ontology id, e.g. Cellosaurus)."""
    if not term.startswith("CL:"):
        return frozenset([term])
    return frozenset([term, *ontology_parser().get_term_ancestors(term)])


def _level_terms(term: str, table: list[dict[str, str]]) -> dict[str, tuple[str, str]]:
    """Level -> (name, ontology id) of ``term``: the first row of each level that is the term or an ancestor."""
    lineage, out = term_lineage(term), {}
    first_id = {}
    for row in table:
        first_id.setdefault((row["level"], row["name"]), row["ontology_term_id"])
        if row["level"] not in out and row["ontology_term_id"] in lineage:
            out[row["level"]] = (row["name"], first_id[(row["level"], row["name"])])
    return out


@cache
def level_term(term: str, level: str) -> str:
    """The ontology id of ``term``'s group at ``level`` of the levels table ('' when it has none there)."""
    return _level_terms(term, levels_table()).get(level, ("", ""))[1] if term else ""


def class_hierarchy(classes: list[str], ontology_ids: dict[str, str]) -> dict:
    """The levels and back-off terms of a model's classes (the model's ``hierarchy.json``).

    Returns
    -------
    dict
        ``levels``: level -> {``names``, ``ontology_term_ids`` (one per group), ``class_group`` (one group
        index per class, -1 when the class has no term at that level)}; ``nodes``: the candidate answers,
        most specific first, each {``name``, ``ontology_term_id``, ``classes`` (indices), ``depth``
        (the number of its ontology ancestors)}.
    """
    table = levels_table()
    ids = [str(ontology_ids.get(c, "")) for c in classes]
    per_class = [_level_terms(t, table) if t else {} for t in ids]
    levels = {}
    for level in dict.fromkeys(row["level"] for row in table):
        groups = sorted({terms[level] for terms in per_class if level in terms})
        if groups:
            levels[level] = {
                "names": [name for name, _ in groups],
                "ontology_term_ids": [term for _, term in groups],
                "class_group": [groups.index(terms[level]) if level in terms else -1 for terms in per_class],
            }
    nodes = {t: {"name": c, "ontology_term_id": t} for c, t in zip(classes, ids, strict=True) if t}
    lineage_of = {i: per_class[i].get("lineage") for i in range(len(classes))}
    for lineage in lineage_of.values():
        if lineage:
            nodes.setdefault(lineage[1], {"name": lineage[0], "ontology_term_id": lineage[1]})
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            lineage = lineage_of[i]
            if not lineage or lineage != lineage_of[j]:
                continue
            for term in ontology_parser().get_lowest_common_ancestors(ids[i], ids[j]):
                if lineage[1] in term_lineage(term):  # the lineage term itself or below it
                    nodes.setdefault(term, {"name": ontology_parser().get_term_label(term), "ontology_term_id": term})
    class_lineages = [term_lineage(t) if t else frozenset() for t in ids]
    out_nodes = []
    for term, node in nodes.items():
        members = [i for i, lineage in enumerate(class_lineages) if term in lineage]
        depth = len(term_lineage(term)) - 1
        out_nodes.append(node | {"classes": members, "depth": depth})
    # most specific first: fewest classes, then deepest in the ontology
    out_nodes.sort(key=lambda n: (len(n["classes"]), -n["depth"], n["ontology_term_id"]))
    return {"levels": levels, "nodes": out_nodes, "table": LEVELS_TABLE.name}


def _membership(groups: list[list[int]], n_classes: int) -> np.ndarray:
    matrix = np.zeros((n_classes, len(groups)), dtype=np.float64)
    for g, members in enumerate(groups):
        matrix[members, g] = 1.0
    return matrix


def answers(
    probabilities: np.ndarray,
    classes: np.ndarray,
    ontology_ids: dict[str, str],
    hierarchy: dict | None,
    *,
    min_probability: float,
    novel: np.ndarray,
    backoff: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each cell's answer: (label, ontology id, probability of the answer, kind).

    ``kind`` is ``finest`` (a class), ``coarser`` (a common ancestor), ``uncertain`` (no candidate reaches
    ``min_probability``) or ``novel`` (``novel`` cells: unlike the reference). Without a hierarchy, or with
    ``backoff`` False, the candidates are the classes alone.
    """
    n_cells, n_classes = probabilities.shape
    nodes = (hierarchy or {}).get("nodes") or [] if backoff else []
    if not nodes:  # the classes alone: the most probable one, when it is sure enough
        nodes = [
            {"name": c, "ontology_term_id": ontology_ids.get(c, ""), "classes": [i]} for i, c in enumerate(classes)
        ]
    names = np.array([n["name"] for n in nodes] + [UNASSIGNED], dtype=object)
    ids = np.array([n["ontology_term_id"] for n in nodes] + [""], dtype=object)
    summed = probabilities @ _membership([n["classes"] for n in nodes], n_classes)
    # the candidate with the fewest classes among those that reach the probability, the more probable of
    # equals (sizes are whole numbers and probabilities within [0, 1], so -2 x size + probability orders both)
    size = np.array([len(n["classes"]) for n in nodes], dtype=np.float64)
    reaches = summed >= min_probability
    best = np.where(reaches, summed - 2.0 * size, -np.inf).argmax(axis=1)
    passing = reaches[np.arange(n_cells), best]
    probability = np.where(passing, summed[np.arange(n_cells), best], probabilities.max(axis=1))
    choice = np.where(passing & ~novel, best, len(nodes))
    kind = np.where(size[best] == 1, FINEST, COARSER).astype(object)
    kind[~passing] = UNCERTAIN
    kind[novel] = NOVEL
    return names[choice], ids[choice], probability, kind


def level_answers(
    probabilities: np.ndarray, hierarchy: dict | None, *, min_probability: float, novel: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Level -> (label, ontology id) per cell: the level's group with the largest summed probability,
    ``Unassigned`` when it is below ``min_probability`` or the cell is novel."""
    out = {}
    for level, spec in ((hierarchy or {}).get("levels") or {}).items():
        group = np.asarray(spec["class_group"])
        members = [np.flatnonzero(group == g).tolist() for g in range(len(spec["names"]))]
        summed = probabilities @ _membership(members, probabilities.shape[1])
        best = summed.argmax(axis=1)
        ok = (summed[np.arange(len(best)), best] >= min_probability) & ~novel
        names = np.array([*spec["names"], UNASSIGNED], dtype=object)
        ids = np.array([*spec["ontology_term_ids"], ""], dtype=object)
        choice = np.where(ok, best, len(spec["names"]))
        out[level] = (names[choice], ids[choice])
    return out
