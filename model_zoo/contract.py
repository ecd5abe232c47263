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

LABEL = "label"
UNCERTAINTY = "uncertainty"
ONTOLOGY_TERM_ID = "ontology_term_id"
PROB_PREFIX = "prob:"
EMB_PREFIX = "emb:"
UMAP_PREFIX = "umap:"

# run options a family accepts in ``params``; ``genes_present`` lists the model genes the query has
# (empty: all of them), so that absent genes are not mistaken for zero expression.
GENES_PRESENT = "genes_present"


def as_model_matrix(model_input, genes: np.ndarray, params: dict | None) -> tuple[sp.csr_matrix, np.ndarray]:
    """The input as CSR counts in model gene order, and a mask of the model genes the query has."""
    params = params or {}
    if isinstance(model_input, pd.DataFrame):
        columns = model_input.columns.astype(str)
        present = np.isin(genes, columns)
        frame = model_input.reindex(columns=genes, fill_value=0)
        matrix = sp.csr_matrix(frame.to_numpy(dtype=np.float64))
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
    return matrix, present


def output_frame(
    classes: np.ndarray,
    probabilities: np.ndarray,
    ontology_ids: dict[str, str],
    embedding: np.ndarray,
    umap: np.ndarray,
) -> pd.DataFrame:
    """Assemble the contract's flat output columns from per-cell arrays."""
    best = probabilities.argmax(axis=1)
    labels = classes[best]
    columns: dict[str, np.ndarray] = {
        LABEL: labels,
        UNCERTAINTY: np.clip(1.0 - probabilities[np.arange(len(best)), best], 0.0, 1.0),
        ONTOLOGY_TERM_ID: np.array([ontology_ids.get(str(c), "") for c in labels], dtype=object),
    }
    columns.update({f"{PROB_PREFIX}{c}": probabilities[:, i] for i, c in enumerate(classes)})
    columns.update({f"{EMB_PREFIX}{i}": embedding[:, i] for i in range(embedding.shape[1])})
    columns.update({f"{UMAP_PREFIX}{i}": umap[:, i] for i in range(umap.shape[1])})
    return pd.DataFrame(columns)
