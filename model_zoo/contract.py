"""The model contract of DESIGN.md, shared by every family: what ``predict`` takes and returns.

``predict(model_input, params)`` takes a cells x model-genes matrix of raw counts in the model's gene
order (a scipy CSR matrix, the runner's path) or a pandas DataFrame with gene columns (what
``mlflow models serve`` and ``spark_udf`` send), and returns one row per cell with flat columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from model_zoo import novelty, ontology

LABEL = "label"
UNCERTAINTY = "uncertainty"
ONTOLOGY_TERM_ID = "ontology_term_id"
PROB_PREFIX = "prob:"
EMB_PREFIX = "emb:"
UMAP_PREFIX = "umap:"

NOVELTY = "novelty"
# the answer: the most specific label the model stands behind (model_zoo.ontology.answers)
ANSWER = "answer"
ANSWER_ONTOLOGY_TERM_ID = "answer_ontology_term_id"
ANSWER_PROBABILITY = "answer_probability"
ANSWER_KIND = "answer_kind"
LEVEL_PREFIX = "level:"  # level:<level> and level:<level>:ontology_term_id, per level of the hierarchy

# run options a family accepts in ``params``; ``genes_present`` lists the model genes the query has
# (empty: all of them), so that absent genes are not mistaken for zero expression; ``cell_totals`` gives
# each cell's total count over all the query's genes (model_zoo.novelty).
GENES_PRESENT = "genes_present"
CELL_TOTALS = novelty.CELL_TOTALS
UNASSIGNED_THRESHOLD = "unassigned_threshold"  # the answer needs a probability of at least 1 - this
NOVELTY_THRESHOLD = "novelty_threshold"  # a cell whose novelty score is above this is Unassigned
BACKOFF = "backoff"  # answer with a common ancestor when the classes are in doubt
ANSWER_OPTIONS = {UNASSIGNED_THRESHOLD: 0.5, NOVELTY_THRESHOLD: 1.0, BACKOFF: True}

# a DataFrame input (serve, spark_udf): an optional column with each cell's total count over all its genes
# (else the row sums over its gene columns), the least share of the model's genes it must name, and how
# close to an integer a count written as a float must be
TOTAL_COUNTS = "total_counts"
MIN_GENE_OVERLAP = 0.2
INTEGER_TOLERANCE = 1e-6


class InputRefused(MlflowException, ValueError):
    """Input the model cannot answer for: ``mlflow models serve`` answers it with HTTP 400 and the message; in
    Python it is a ``ValueError`` (and an ``MlflowException``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def as_model_matrix(
    model_input, genes: np.ndarray, params: dict | None
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray | None]:
    """The input as CSR counts in model gene order, a mask of the model genes the query has, and each
    cell's total count over all the query's genes (``params['cell_totals']``, else a DataFrame's
    ``total_counts`` column or its row sums over all its gene columns; None for a bare matrix, which holds the
    model's genes alone). A DataFrame is checked and aligned by :func:`frame_matrix`."""
    params = params or {}
    totals = None
    if isinstance(model_input, pd.DataFrame):
        matrix, present, totals = frame_matrix(model_input, genes)
    else:
        matrix = sp.csr_matrix(model_input, dtype=np.float64)
        if matrix.shape[1] != len(genes):
            raise ValueError(
                f"model_input has {matrix.shape[1]} columns but the model has {len(genes)} genes; "
                "align the query to the model's genes first (the cellzoo runner does this)"
            )
        present = np.ones(len(genes), dtype=bool)
    listed: Sequence[str] = params.get(GENES_PRESENT) or []
    if len(listed):
        present &= np.isin(genes, np.asarray(listed, dtype=str))
    if not present.any():
        raise InputRefused("none of the model's genes are present in the input")
    given = params.get(CELL_TOTALS)
    if given is not None and len(given):
        totals = np.asarray(given, dtype=np.float64)
        if len(totals) != matrix.shape[0]:
            raise ValueError(f"params['{CELL_TOTALS}'] has {len(totals)} values for {matrix.shape[0]} cells")
    return matrix, present, totals


def frame_matrix(frame: pd.DataFrame, genes: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """A DataFrame of cells x genes (what ``mlflow models serve`` and ``spark_udf`` send) as the model's matrix.

    Columns are matched to the model's genes by name (the model's own gene ids, ``genes.txt``). A model gene
    that is not a column, or whose column is NaN for every cell, is missing: never read as zero. The values
    must be raw counts: finite, non-negative integers; a column with NaN for some cells and numbers for
    others is refused (a gene is measured for all the cells of a request or for none), and so is an input
    holding fewer than ``MIN_GENE_OVERLAP`` of the model's genes. Each cell's total is its ``total_counts``
    column when given (over its genes but the technical ones, :data:`model_zoo.novelty.TECHNICAL`), else the
    sum over all its gene columns but the technical ones, the model's and the others (the novelty score
    compares the share of the counts that falls in the model's genes).
    """
    columns = frame.columns.astype(str)
    if columns.duplicated().any():
        raise InputRefused(f"the input has duplicate columns, e.g. {columns[columns.duplicated()][0]!r}: one per gene")
    frame = frame.set_axis(columns, axis=1)
    given_totals = frame.pop(TOTAL_COUNTS) if TOTAL_COUNTS in frame else None
    numeric = frame.select_dtypes(include="number")
    not_numeric = [c for c in frame.columns if c not in numeric.columns and c in set(map(str, genes))]
    if not_numeric:
        raise InputRefused(f"gene column {not_numeric[0]!r} holds {frame[not_numeric[0]].dtype} values, not counts")
    values = numeric.to_numpy(dtype=np.float64)
    nan = np.isnan(values)
    missing = nan.all(axis=0) if len(values) else np.zeros(values.shape[1], dtype=bool)
    names = numeric.columns.to_numpy(dtype=str)
    _check_counts(values[:, ~missing], nan[:, ~missing], names[~missing])
    measured = names[~missing]
    present = np.isin(genes, measured)
    needed = int(np.ceil(MIN_GENE_OVERLAP * len(genes)))
    if present.sum() < needed:
        raise InputRefused(
            f"only {int(present.sum())} of the model's {len(genes)} genes ({present.mean():.1%}) are columns of the "
            f"input (e.g. {', '.join(measured[:3]) or 'none'}); at least {needed} ({MIN_GENE_OVERLAP:.0%}) are needed. "
            f"Name the columns with the model's gene ids (genes.txt, e.g. {', '.join(map(str, genes[:3]))}); "
            "leave a gene the query lacks out, or send it as NaN, never as 0"
        )
    where = pd.Index(names).get_indexer(genes)
    block = np.zeros((len(values), len(genes)))
    block[:, present] = values[:, where[present]]
    counted = ~missing & ~novelty.technical(names)  # the novelty's totals leave the technical genes out
    totals = values[:, counted].sum(axis=1) if given_totals is None else given_totals.to_numpy(dtype=np.float64)
    return sp.csr_matrix(block), present, totals


def _check_counts(values: np.ndarray, nan: np.ndarray, names: np.ndarray) -> None:
    """Refuse values that are not raw counts, naming a column and a value."""
    partly = nan.any(axis=0)
    if partly.any():
        column = names[partly.argmax()]
        raise InputRefused(
            f"gene column {column!r} is NaN for {int(nan[:, partly.argmax()].sum())} of {len(values)} cells and "
            "holds counts for the others: a gene is missing (NaN, or left out) for every cell of a request or for "
            "none; annotate cells measured on different gene panels in separate requests"
        )
    for bad, what in (
        (~np.isfinite(values), "infinite"),
        (values < 0, "negative"),
        (np.abs(values - np.round(values)) > INTEGER_TOLERANCE, "non-integer"),
    ):
        if bad.any():
            cell, column = np.argwhere(bad)[0]
            raise InputRefused(
                f"the input holds {what} values ({int(bad.sum())}, e.g. {values[cell, column]:g} in gene column "
                f"{names[column]!r}): the model takes raw counts (non-negative integers) as the assay measured "
                "them, not normalised or log-transformed values"
            )


def answer_options(params: dict | None) -> dict:
    """The answer's run options (``ANSWER_OPTIONS``) from ``params``, defaults where absent."""
    params = params or {}
    return {name: type(default)(params.get(name, default)) for name, default in ANSWER_OPTIONS.items()}


def output_frame(
    classes: np.ndarray,
    probabilities: np.ndarray,
    ontology_ids: dict[str, str],
    embedding: np.ndarray,
    umap: np.ndarray,
    *,
    novelty_score: np.ndarray | None = None,
    hierarchy: dict | None = None,
    params: dict | None = None,
) -> pd.DataFrame:
    """Assemble the contract's flat output columns from per-cell arrays.

    ``label`` / ``uncertainty`` / ``ontology_term_id`` are the finest guess (the most probable class);
    ``answer*`` the most specific label the model stands behind and why (:func:`model_zoo.ontology.answers`,
    with the thresholds of ``params``); ``level:*`` each coarser level of the hierarchy.
    """
    options = answer_options(params)
    best = probabilities.argmax(axis=1)
    labels = classes[best]
    n_cells = len(best)
    score = np.full(n_cells, np.nan) if novelty_score is None else np.asarray(novelty_score, dtype=np.float64)
    novel = np.nan_to_num(score, nan=-np.inf) > options[NOVELTY_THRESHOLD]
    min_probability = 1.0 - options[UNASSIGNED_THRESHOLD]
    answer, answer_id, answer_probability, kind = ontology.answers(
        probabilities,
        classes,
        ontology_ids,
        hierarchy,
        min_probability=min_probability,
        novel=novel,
        backoff=options[BACKOFF],
    )
    columns: dict[str, np.ndarray] = {
        LABEL: labels,
        UNCERTAINTY: np.clip(1.0 - probabilities[np.arange(n_cells), best], 0.0, 1.0),
        ONTOLOGY_TERM_ID: np.array([ontology_ids.get(str(c), "") for c in labels], dtype=object),
        NOVELTY: score,
        ANSWER: answer,
        ANSWER_ONTOLOGY_TERM_ID: answer_id,
        ANSWER_PROBABILITY: answer_probability,
        ANSWER_KIND: kind,
    }
    for level, (names, ids) in ontology.level_answers(
        probabilities, hierarchy, min_probability=min_probability, novel=novel
    ).items():
        columns[f"{LEVEL_PREFIX}{level}"] = names
        columns[f"{LEVEL_PREFIX}{level}:{ONTOLOGY_TERM_ID}"] = ids
    columns.update({f"{PROB_PREFIX}{c}": probabilities[:, i] for i, c in enumerate(classes)})
    columns.update({f"{EMB_PREFIX}{i}": embedding[:, i] for i in range(embedding.shape[1])})
    columns.update({f"{UMAP_PREFIX}{i}": umap[:, i] for i in range(umap.shape[1])})
    return pd.DataFrame(columns)
