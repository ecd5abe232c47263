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


def as_model_matrix(
    model_input, genes: np.ndarray, params: dict | None
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray | None]:
    """The input as CSR counts in model gene order, a mask of the model genes the query has, and each
    cell's total count over all the query's genes (``params['cell_totals']``, else a DataFrame's row sums
    over all its columns; None for a bare matrix, which holds the model's genes alone)."""
    params = params or {}
    totals = None
    if isinstance(model_input, pd.DataFrame):
        columns = model_input.columns.astype(str)
        present = np.isin(genes, columns)
        frame = model_input.reindex(columns=genes, fill_value=0)
        matrix = sp.csr_matrix(frame.to_numpy(dtype=np.float64))
        numbers = model_input.select_dtypes("number")
        kept = ~novelty.technical(numbers.columns)  # the novelty's totals leave the technical genes out
        totals = numbers.loc[:, kept].sum(axis=1).to_numpy(dtype=np.float64)
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
        raise ValueError("none of the model's genes are present in the input")
    given = params.get(CELL_TOTALS)
    if given is not None and len(given):
        totals = np.asarray(given, dtype=np.float64)
        if len(totals) != matrix.shape[0]:
            raise ValueError(f"params['{CELL_TOTALS}'] has {len(totals)} values for {matrix.shape[0]} cells")
    return matrix, present, totals


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
