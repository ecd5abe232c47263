"""The only module that writes into an AnnData, and the atomic write of the output file."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from runner import keys
from runner.errors import InputError, OutputError, UsageError
from runner.files import atomic_path, copy_file
from runner.keys import ResultKeys
from runner.voting import over_cluster, vote

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


def _matrix(frame: pd.DataFrame, prefix: str) -> np.ndarray | None:
    """The columns of ``frame`` named ``prefix*`` as a float32 matrix, or None when it has none."""
    cols = _columns(frame, prefix)
    return frame[cols].to_numpy(dtype=np.float32) if cols else None


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


def _categorical(values: np.ndarray) -> pd.Categorical:
    """Only the categories that occur (sorted, ``Unassigned`` last), as plain ``str``: scanpy's plots and
    ``rank_genes_groups`` fail on categories that no cell has, and ``cellxgene-schema`` refuses categories
    of mixed types (numpy's ``str_`` beside ``str``)."""
    labels = np.asarray(values, dtype=object).astype(str).tolist()
    present = sorted(set(labels) - {keys.UNASSIGNED}) + ([keys.UNASSIGNED] if keys.UNASSIGNED in labels else [])
    return pd.Categorical(labels, categories=present)


def _text(frame: pd.DataFrame, column: str, default: str = "") -> np.ndarray:
    if column not in frame:
        return np.full(len(frame), default, dtype=object)
    return frame[column].fillna(default).astype(str).to_numpy(dtype=object)


def write_results(
    adata,
    frame: pd.DataFrame,
    result: ResultKeys,
    *,
    unassigned_threshold: float,
    provenance: dict,
    no_signal: np.ndarray | None = None,
    majority_voting: bool = False,
) -> None:
    """Write a model's predictions into ``adata``.

    Cells in ``no_signal`` (no counts, or none in the model's genes) are ``Unassigned`` with
    uncertainty 1, whatever the model said of them. A model built before the answer columns existed
    (no ``answer`` in its output) is answered by its finest guess and ``unassigned_threshold``.

    Writes
    ------
    ``obs[K_predicted]``
        categorical: the answer, the most specific label the model stands behind: its class, a common
        Cell Ontology ancestor of the classes the probability is split between (back-off), or
        ``Unassigned`` (uncertain even so, novel, or ``no_signal``). Only the categories that occur, as
        plain ``str`` (every categorical below too): scanpy, ``cellxgene-schema`` and ``cellxgene launch`` read them.
    ``obs[K_ontology_term_id]``
        Cell Ontology id of the answer ('' when unassigned or unknown).
    ``obs[K_uncertainty]``
        float in [0, 1]: 1 - the probability of the finest guess; 1 for ``no_signal`` cells.
    ``obs[K_novelty]``
        float: how unlike the reference the cell is (1.0: the boundary that ~1% of reference-like cells
        pass); NaN for models without a novelty score.
    ``obs[K_finest]``, ``obs[K_finest_ontology_term_id]``
        the most probable class and its id, whatever its probability (for a look behind the answer).
    ``obs[K_answer_kind]``
        categorical: ``finest``, ``coarser`` (backed off), ``uncertain``, ``novel`` or ``no_signal``.
    ``obs[K_<level>]``, ``obs[K_<level>_ontology_term_id]``
        for each level of the model's hierarchy (``compartment``, ``lineage``): the label at that level
        (``Unassigned`` when in doubt or novel) and its Cell Ontology id.
    ``obs[K_majority_voting]``, ``obs[K_majority_voting_ontology_term_id]``, ``obs[K_over_clustering]``
        with ``majority_voting`` only: the most frequent ``K_predicted`` of the cell's over-cluster (``Unassigned``
        included: a cluster of mostly novel cells stays ``Unassigned``), its id, and the cluster
        (:mod:`runner.voting`, on the model's embedding).
    ``obsm[K_probabilities]``
        float32 array (cells x classes) of per-class probabilities; ``uns[K]['classes']`` names the columns.
    ``obsm[X_K]``, ``obsm[X_K_umap]``
        the model's embedding, and the query projected onto the reference UMAP.
    ``uns[K]``
        provenance of the run, and ``classes``.
    """
    uncertainty = frame[keys.UNCERTAINTY].to_numpy(dtype=np.float32).copy()
    silent = np.zeros(len(frame), dtype=bool) if no_signal is None else np.asarray(no_signal, dtype=bool)
    uncertainty[silent] = 1.0
    finest = _text(frame, keys.LABEL)
    finest_id = _text(frame, keys.ONTOLOGY_TERM_ID)
    if keys.ANSWER in frame:
        answer, answer_id = _text(frame, keys.ANSWER), _text(frame, keys.ANSWER_ONTOLOGY_TERM_ID)
        kind = _text(frame, keys.ANSWER_KIND)
    else:  # a model without answer columns: its finest guess, when it is sure enough
        uncertain = uncertainty > unassigned_threshold
        answer = np.where(uncertain, keys.UNASSIGNED, finest).astype(object)
        answer_id = np.where(uncertain, "", finest_id).astype(object)
        kind = np.where(uncertain, "uncertain", "finest").astype(object)
    answer[silent], answer_id[silent], kind[silent] = keys.UNASSIGNED, "", keys.NO_SIGNAL
    obs = {
        result.predicted: _categorical(answer),
        result.ontology_term_id: pd.Categorical(answer_id),
        result.uncertainty: uncertainty,
        result.novelty: frame[keys.NOVELTY].to_numpy(dtype=np.float32) if keys.NOVELTY in frame else None,
        result.finest: _categorical(finest),
        result.finest_ontology_term_id: pd.Categorical(finest_id),
        result.answer_kind: pd.Categorical(kind),
    }
    levels = [c.removeprefix(keys.LEVEL_PREFIX) for c in frame.columns if c.startswith(keys.LEVEL_PREFIX)]
    for level in (name for name in levels if ":" not in name):
        names = _text(frame, f"{keys.LEVEL_PREFIX}{level}")
        ids = _text(frame, f"{keys.LEVEL_PREFIX}{level}:{keys.ONTOLOGY_TERM_ID}")
        names[silent], ids[silent] = keys.UNASSIGNED, ""
        obs[result.level(level)] = _categorical(names)
        obs[result.level_ontology_term_id(level)] = pd.Categorical(ids)
    matrices = {  # each read from the frame once: the vote and obsm share them
        result.probabilities: _matrix(frame, keys.PROB_PREFIX),
        result.embedding: _matrix(frame, keys.EMB_PREFIX),
        result.umap: _matrix(frame, keys.UMAP_PREFIX),
    }
    n_clusters = 0
    if majority_voting:
        embedding = matrices[result.embedding]  # a model without one: its probabilities
        clusters = over_cluster(embedding if embedding is not None else matrices[result.probabilities])
        voted, _ = vote(clusters, answer)
        ids = dict(zip(answer, answer_id, strict=True))
        n_clusters = int(clusters.max(initial=-1)) + 1
        obs[result.majority_voting] = _categorical(voted)
        obs[result.majority_voting_ontology_term_id] = pd.Categorical([ids[label] for label in voted])
        present = [str(i) for i in np.unique(clusters)]  # k-means may leave a cluster empty: only those that occur
        obs[result.over_clustering] = pd.Categorical(clusters.astype(str), categories=present)
    for key in result.obs_keys():  # with --overwrite: no stale field of an earlier run is left under K
        if key in adata.obs and obs.get(key) is None:
            del adata.obs[key]
    for key, values in obs.items():
        if values is not None:
            adata.obs[key] = values
    classes = [c.removeprefix(keys.PROB_PREFIX) for c in _columns(frame, keys.PROB_PREFIX)]
    for key, values in matrices.items():
        if values is not None:
            adata.obsm[key] = values
        elif key in adata.obsm:  # with --overwrite: an earlier model's embedding is not left beside this one's
            del adata.obsm[key]
    voting = {"majority_voting": {"clusters": n_clusters}} if majority_voting else {}
    adata.uns[result.provenance] = provenance | {"classes": classes} | voting


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
def streamed_output(
    input_path: Path, path: Path, copy: Callable[[Path, Path], object] = copy_file, owned: Sequence[str] = ()
) -> Iterator[Callable]:
    """The output of a streamed query, begun at once: the input is copied (an h5ad byte for byte, the matrix
    never decoded; a zarr store by :func:`zarr_to_h5ad`) to a temporary h5ad beside ``path`` by a background
    thread while the cells are annotated. Yields ``write(results)``, which waits for the copy and replaces its
    ``obs`` with ``results.obs`` and writes every entry of ``results.obsm`` and ``results.uns`` into it; the
    ``owned`` obsm keys (the run's, :meth:`runner.keys.ResultKeys.obsm_keys`) that it does not write are removed
    (an earlier run's, replaced with ``--overwrite``). The file is renamed into place when the block succeeds,
    removed otherwise."""
    with _atomic_path(path) as tmp, ThreadPoolExecutor(max_workers=1) as pool:
        copied = pool.submit(copy, input_path, tmp)
        yield lambda results: _write_into(copied.result(), results, owned)
        copied.result()


MATRIX_ENCODINGS = ("csr_matrix", "csc_matrix")
COPY_VALUES = 1 << 24  # values copied at a time from a zarr store's matrices (64 MB of float32)


def zarr_to_h5ad(source: Path, target: Path) -> Path:
    """``target`` made the h5ad of the AnnData zarr store ``source``, holding no matrix whole: ``X``, each
    layer and ``raw.X`` are copied ``COPY_VALUES`` at a time (sparse: their ``data``, ``indices``, ``indptr``;
    dense: blocks of rows), every other element through anndata (``read_elem``/``write_elem``)."""
    import zarr

    try:
        _zarr_into_h5ad(zarr.open_group(source, mode="r"), target)
    except Exception as err:  # a damaged element of the store: said in one line, the output removed
        raise InputError(f"{source} could not be copied into the output: {err}") from err
    return target


def _zarr_into_h5ad(store, target: Path) -> None:
    import h5py
    from anndata.io import read_elem, write_elem

    with h5py.File(target, "w") as out:
        out.attrs.update(dict(store.attrs))
        for key in store:
            if store[key].attrs.get("encoding-type") == "null":  # zarr format 3's 'no raw': h5ad has none
                continue
            if key in ("layers", "raw"):
                group = out.create_group(key)
                group.attrs.update(dict(store[key].attrs))
                for name in store[key]:
                    element = store[key][name]
                    if key == "layers" or name == "X":
                        _copy_matrix(element, group, name)
                    else:
                        write_elem(group, name, read_elem(element))
            elif key == "X":
                _copy_matrix(store[key], out, key)
            else:
                write_elem(out, key, read_elem(store[key]))


def _copy_matrix(element, parent, name: str) -> None:
    """A matrix of a zarr store into the h5py group ``parent``, a block at a time."""
    if hasattr(element, "shape"):  # a dense array
        _copy_array(element, parent, name)
        return
    if element.attrs.get("encoding-type") not in MATRIX_ENCODINGS:  # another encoding: anndata copies it
        from anndata.io import read_elem, write_elem

        write_elem(parent, name, read_elem(element))
        return
    group = parent.create_group(name)
    group.attrs.update(dict(element.attrs))
    for part in ("data", "indices", "indptr"):
        _copy_array(element[part], group, part)


def _copy_array(array, parent, name: str) -> None:
    rows = max(1, COPY_VALUES // max(1, int(np.prod(array.shape[1:]))))
    dataset = parent.create_dataset(name, shape=array.shape, dtype=array.dtype)
    for start in range(0, array.shape[0], rows):
        dataset[start : start + rows] = array[start : start + rows]


def _write_into(path: Path, results, owned: Sequence[str]) -> None:
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
        for key in set(owned) - set(results.obsm):
            if key in f["obsm"]:
                del f["obsm"][key]


def check_table_path(path: Path) -> None:
    """Refuse a ``--table`` path whose format is unknown, before anything runs."""
    if path.suffix.lower() not in TABLE_SEPARATORS:
        raise UsageError(
            f"--table {path}: unknown table format {path.suffix!r}; use one of {', '.join(TABLE_SEPARATORS)}"
        )


def results_table(adata, result: ResultKeys) -> pd.DataFrame:
    """One row per cell: barcode, label (the answer), uncertainty, ontology id, novelty, finest guess, the
    majority vote (when voted) and ``prob:<class>`` per class."""
    table = pd.DataFrame(
        {
            "barcode": adata.obs_names.astype(str),
            keys.LABEL: adata.obs[result.predicted].astype(str).to_numpy(),
            keys.UNCERTAINTY: adata.obs[result.uncertainty].to_numpy(),
            keys.ONTOLOGY_TERM_ID: adata.obs[result.ontology_term_id].astype(str).to_numpy(),
        }
    )
    optional = ((keys.NOVELTY, result.novelty), ("finest", result.finest), ("majority_voting", result.majority_voting))
    for column, key in optional:
        if key in adata.obs:
            table[column] = adata.obs[key].to_numpy()
    if result.probabilities in adata.obsm:
        probs = np.asarray(adata.obsm[result.probabilities])
        for i, name in enumerate(adata.uns[result.provenance]["classes"]):
            table[f"{keys.PROB_PREFIX}{name}"] = probs[:, i]
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
