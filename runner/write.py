"""The only module that writes into an AnnData, and the atomic write of the output file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from runner import keys
from runner.errors import OutputError
from runner.keys import ResultKeys


def existing_keys(adata, result: ResultKeys) -> list[str]:
    """The result fields that the input already has."""
    taken = [f"obs[{k!r}]" for k in result.obs_keys() if k in adata.obs]
    taken += [f"obsm[{k!r}]" for k in result.obsm_keys() if k in adata.obsm]
    taken += [f"uns[{result.provenance!r}]"] if result.provenance in adata.uns else []
    return taken


def check_keys_free(adata, result: ResultKeys, overwrite: bool) -> None:
    taken = existing_keys(adata, result)
    if taken and not overwrite:
        raise OutputError(
            f"the input already has {', '.join(taken)}; pass --overwrite to replace them, "
            f"or --key-added with another key than {result.key!r}"
        )


def _columns(frame: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in frame.columns if c.startswith(prefix)]


def write_results(
    adata, frame: pd.DataFrame, result: ResultKeys, *, unassigned_threshold: float, provenance: dict
) -> None:
    """Write a model's predictions into ``adata``.

    Writes
    ------
    ``obs[K_predicted]``
        categorical label; ``Unassigned`` where the uncertainty is above ``unassigned_threshold``.
    ``obs[K_uncertainty]``
        float in [0, 1]; 0 = certain (what it means is in the model card and ``uns[K]``).
    ``obs[K_ontology_term_id]``
        Cell Ontology id of the predicted label ('' when unassigned or unknown).
    ``obsm[K_probabilities]``
        DataFrame of per-class probabilities, class names as columns.
    ``obsm[X_K]``, ``obsm[X_K_umap]``
        the model's embedding, and the query projected onto the reference UMAP.
    ``uns[K]``
        provenance of the run.
    """
    index = adata.obs_names
    uncertainty = frame[keys.UNCERTAINTY].to_numpy(dtype=np.float32)
    unassigned = uncertainty > unassigned_threshold
    labels = frame[keys.LABEL].astype(str).to_numpy(dtype=object)
    labels[unassigned] = keys.UNASSIGNED
    prob_cols = _columns(frame, keys.PROB_PREFIX)
    classes = [c.removeprefix(keys.PROB_PREFIX) for c in prob_cols]
    categories = [*classes, keys.UNASSIGNED] if classes else sorted(set(labels))
    adata.obs[result.predicted] = pd.Categorical(labels, categories=categories)
    adata.obs[result.uncertainty] = uncertainty
    ontology = frame.get(keys.ONTOLOGY_TERM_ID, pd.Series([""] * len(frame))).fillna("").astype(str).to_numpy()
    ontology[unassigned] = ""
    adata.obs[result.ontology_term_id] = pd.Categorical(ontology)
    if prob_cols:
        adata.obsm[result.probabilities] = pd.DataFrame(
            frame[prob_cols].to_numpy(dtype=np.float32), index=index, columns=classes
        )
    for key, prefix in ((result.embedding, keys.EMB_PREFIX), (result.umap, keys.UMAP_PREFIX)):
        cols = _columns(frame, prefix)
        if cols:
            adata.obsm[key] = frame[cols].to_numpy(dtype=np.float32)
    adata.uns[result.provenance] = provenance


def write_h5ad_atomic(adata, path: Path) -> None:
    """Write ``adata`` to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        adata.write_h5ad(tmp, compression="gzip")
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"could not write {path}: {err}") from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
