"""The only module that writes into an AnnData, and the atomic write of the output file."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from runner import keys
from runner.errors import OutputError, UsageError
from runner.files import atomic_path, copy_file
from runner.keys import ResultKeys

TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t", ".parquet": ""}  # '' : parquet


def existing_keys(existing: tuple[list[str], list[str], list[str]], result: ResultKeys) -> list[str]:
    """The result fields that the input already has; ``existing``: the names in its obs, obsm and uns."""
    obs, obsm, uns = existing
    taken = [f"obs[{k!r}]" for k in result.obs_keys() if k in obs]
    taken += [f"obsm[{k!r}]" for k in result.obsm_keys() if k in obsm]
    taken += [f"uns[{result.provenance!r}]"] if result.provenance in uns else []
    return taken


def check_keys_free(existing: tuple[list[str], list[str], list[str]], result: ResultKeys, overwrite: bool) -> None:
    taken = existing_keys(existing, result)
    if taken and not overwrite:
        raise OutputError(
            f"the input already has {', '.join(taken)}; pass --overwrite to replace them, "
            f"or --key-added with another key than {result.key!r}"
        )


def _columns(frame: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in frame.columns if c.startswith(prefix)]


def make_barcodes_unique(adata) -> int:
    """Make duplicate cell barcodes unique (anndata's rule: append ``-1``, ``-2``, ...); their number.

    Writes
    ------
    ``obs_names``
        unchanged where unique; duplicates get a suffix.
    """
    n = int(adata.obs_names.duplicated().sum())
    if n:
        adata.obs_names_make_unique()
    return n


def write_results(
    adata,
    frame: pd.DataFrame,
    result: ResultKeys,
    *,
    unassigned_threshold: float,
    provenance: dict,
    no_signal: np.ndarray | None = None,
) -> None:
    """Write a model's predictions into ``adata``.

    Cells in ``no_signal`` (no counts, or none in the model's genes) are ``Unassigned`` with
    uncertainty 1, whatever the model said of them.

    Writes
    ------
    ``obs[K_predicted]``
        categorical label; ``Unassigned`` where the uncertainty is above ``unassigned_threshold``
        and for ``no_signal`` cells.
    ``obs[K_uncertainty]``
        float in [0, 1]; 0 = certain (what it means is in the model card and ``uns[K]``); 1 for
        ``no_signal`` cells.
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
    uncertainty = frame[keys.UNCERTAINTY].to_numpy(dtype=np.float32).copy()
    if no_signal is not None:
        uncertainty[no_signal] = 1.0
    unassigned = uncertainty > unassigned_threshold
    if no_signal is not None:
        unassigned |= no_signal
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


@contextlib.contextmanager
def _atomic_path(path: Path):
    """:func:`runner.files.atomic_path`, with a failure to write said as an :class:`OutputError`."""
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as err:
        raise OutputError(f"could not write {path}: {err}") from err


def write_h5ad_atomic(adata, path: Path) -> None:
    """Write ``adata`` to a temporary file beside ``path`` and rename it into place."""
    with _atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression="gzip")


@contextlib.contextmanager
def streamed_output(input_path: Path, path: Path) -> Iterator[Callable]:
    """The output of a streamed query, begun at once: the input file is copied byte for byte (the matrix
    is never decoded) to a temporary file beside ``path`` by a background thread while the cells are
    annotated. Yields ``write(results)``, which waits for the copy and replaces its ``obs`` with
    ``results.obs`` and writes every entry of ``results.obsm`` and ``results.uns`` into it. The file is
    renamed into place when the block succeeds, removed otherwise."""
    with _atomic_path(path) as tmp, ThreadPoolExecutor(max_workers=1) as pool:
        copied = pool.submit(copy_file, input_path, tmp)
        yield lambda results: _write_into(copied.result(), results)
        copied.result()


def _write_into(path: Path, results) -> None:
    import h5py
    from anndata.io import write_elem

    with h5py.File(path, "r+") as f:
        del f["obs"]
        write_elem(f, "obs", results.obs)
        for group, entries in (("obsm", results.obsm), ("uns", results.uns)):
            if group not in f:
                write_elem(f, group, {})
            for key in entries:
                if key in f[group]:
                    del f[group][key]
                write_elem(f[group], key, entries[key])


def check_table_path(path: Path) -> None:
    """Refuse a ``--table`` path whose format is unknown, before anything runs."""
    if path.suffix.lower() not in TABLE_SEPARATORS:
        raise UsageError(
            f"--table {path}: unknown table format {path.suffix!r}; use one of {', '.join(TABLE_SEPARATORS)}"
        )


def results_table(adata, result: ResultKeys) -> pd.DataFrame:
    """One row per cell: barcode, label, uncertainty, ontology id and ``prob:<class>`` per class."""
    table = pd.DataFrame(
        {
            "barcode": adata.obs_names.astype(str),
            keys.LABEL: adata.obs[result.predicted].astype(str).to_numpy(),
            keys.UNCERTAINTY: adata.obs[result.uncertainty].to_numpy(),
            keys.ONTOLOGY_TERM_ID: adata.obs[result.ontology_term_id].astype(str).to_numpy(),
        }
    )
    if result.probabilities in adata.obsm:
        probs = adata.obsm[result.probabilities]
        for column in probs.columns:
            table[f"{keys.PROB_PREFIX}{column}"] = probs[column].to_numpy()
    return table


def write_table_atomic(adata, result: ResultKeys, path: Path) -> None:
    """Write :func:`results_table` as csv, tsv or parquet (by suffix) to a temporary file renamed into place."""
    check_table_path(path)
    table = results_table(adata, result)
    with _atomic_path(path) as tmp:
        separator = TABLE_SEPARATORS[path.suffix.lower()]
        if separator:
            table.to_csv(tmp, sep=separator, index=False)
        else:
            table.to_parquet(tmp, index=False)
