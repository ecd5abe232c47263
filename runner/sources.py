"""Where ``annotate`` reads a query's counts from, a block of cells at a time.

Two sources: an AnnData in memory (every format :func:`runner.readers.read_input` reads), and an
h5ad file or AnnData zarr store streamed from disk (:class:`StreamedFile`), which never holds more than one
block of the matrix. ``annotate`` streams an h5ad or zarr store whose counts are stored by row (CSR, or
dense) when it has at least :data:`STREAM_MIN_CELLS` cells, or when asked to (``--backed``);
``--in-memory`` reads it whole. Both give the same results for the same cells (tests/test_streaming.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from runner.errors import InputError, UsageError
from runner.files import copy_file
from runner.query import (
    as_csr,
    candidate_matrices,
    counts_matrix,
    counts_source,
    dtype_problem,
    indices_problem,
    indptr_problem,
    rebuilt_counts,
)
from runner.readers import (
    CODEC_ERRORS,
    H5AD,
    READ_ERRORS,
    ZARR,
    InputDescription,
    ReadOptions,
    check_zarr_chunks,
    detect_format,
    read_input,
    too_large,
    zarr_decoding,
)
from runner.write import streamed_output, write_h5ad_atomic, zarr_to_h5ad

logger = logging.getLogger(__name__)

STREAM_MIN_CELLS = 100_000  # h5ad and zarr queries with this many cells are streamed unless --in-memory
STREAMED_FORMATS = (H5AD, ZARR)
HEAD_CELLS = 1_000  # cells of the other matrices of a streamed file read to say which holds counts


class MemoryQuery:
    """A query read whole into an AnnData; results are written into it and it is written out to a file."""

    streamed = False
    rename_duplicate_barcodes = True  # the output file's cells get unique names

    def __init__(self, adata, found: InputDescription, counts_layer: str | None):
        self.adata, self.found = adata, found
        self.source, x, self.var = counts_matrix(adata, counts_layer)
        self.matrix = as_csr(x)
        self.obs_names = adata.obs_names
        self.n_obs = adata.n_obs
        self.rebuild = rebuilt_counts(self.matrix[:HEAD_CELLS], adata.obs, self.source)

    @property
    def counts(self) -> str:
        """Where the counts come from, as recorded in ``uns[K]['params']['counts']``."""
        return self.rebuild.describe() if self.rebuild else self.source

    def existing(self) -> tuple[list[str], list[str], list[str]]:
        """The names already used in obs, obsm and uns."""
        return list(self.adata.obs.columns), list(self.adata.obsm), list(self.adata.uns)

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        block = self.matrix[start:stop]
        return self.rebuild(block, start) if self.rebuild else block

    def others(self) -> list[tuple[str, sp.csr_matrix]]:
        """Every matrix that may hold counts, for the hint when the chosen one does not."""
        return candidate_matrices(self.adata)

    def target(self):
        """The AnnData the results are written into."""
        return self.adata

    @contextlib.contextmanager
    def output(self, path: Path, owned: Sequence[str] = ()) -> Iterator[Callable]:
        """Yields ``write(target)``: the AnnData with its results, written to ``path`` atomically (``owned``:
        the run's obsm keys, for a streamed output; the target's own are replaced by the results)."""
        yield lambda target: write_h5ad_atomic(target, path)

    def close(self) -> None:
        pass


class AnnDataQuery(MemoryQuery):
    """A user's AnnData in memory (the Python API): the results are written into it, and nothing to a file.
    Its cell names are left as they are, duplicates included (the caller's object is not renamed)."""

    rename_duplicate_barcodes = False

    def __init__(self, adata, counts_layer: str | None):
        super().__init__(adata, InputDescription(None, "AnnData (in memory)"), counts_layer)

    @contextlib.contextmanager
    def output(self, path: Path | None, owned: Sequence[str] = ()) -> Iterator[Callable]:
        yield lambda target: None


def _open_store(path: Path, kind: str):
    """The root group of an h5ad file (h5py) or of an AnnData zarr store, opened to read, and its closer."""
    if kind == ZARR:
        import zarr

        return zarr.open_group(path, mode="r"), lambda: None
    import h5py

    f = h5py.File(path, "r")
    return f, f.close


def _is_group(element) -> bool:
    """An h5py or zarr group (an encoded element such as a CSR matrix), not an array: arrays have a shape."""
    return not hasattr(element, "shape")


class StreamedFile:
    """An h5ad file or AnnData zarr store whose counts are read from disk a block of cells at a time (CSR
    or dense, by row).

    Only ``obs`` and the counts' ``var`` are read whole. The output is a copy of the input (an h5ad's bytes;
    a zarr store's elements, the matrices a block at a time, :func:`runner.write.zarr_to_h5ad`) with the
    results written into its ``obs``, ``obsm`` and ``uns`` (:func:`runner.write.streamed_output`).
    """

    streamed = True
    rename_duplicate_barcodes = True

    def __init__(self, path: Path, counts_layer: str | None, kind: str = H5AD):
        import anndata as ad

        self.path, self.kind = path, kind
        self.file, self._close = _open_store(path, kind)
        try:
            f = self.file
            self.source, element = _counts_element(f, counts_layer, path)
            if kind == ZARR:
                check_zarr_chunks(element, path)  # a missing chunk file would be read as zeros
            self.var = ad.io.read_elem(f["raw/var" if self.source == "raw.X" else "var"])
            self.obs = ad.io.read_elem(f["obs"])
            self._matrix = _row_reader(element, self.source, path)
            n_cells, n_genes = self._matrix.shape
            if (n_cells, n_genes) != (len(self.obs), len(self.var)):
                raise InputError(
                    f"{path}: {self.source} is {n_cells} cells x {n_genes} genes, but obs names {len(self.obs)} cells "
                    f"and var {len(self.var)} genes; the file is damaged"
                )
            self.rebuild = rebuilt_counts(as_csr(self._matrix[:HEAD_CELLS]).copy(), self.obs, self.source)
        except BaseException:
            self._close()
            raise
        self.obs_names = self.obs.index
        self.n_obs = len(self.obs)
        self.found = InputDescription(path, f"{kind} (streamed)")

    def existing(self) -> tuple[list[str], list[str], list[str]]:
        f = self.file
        return list(self.obs.columns), list(f["obsm"]) if "obsm" in f else [], list(f["uns"]) if "uns" in f else []

    counts = MemoryQuery.counts

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        try:
            with zarr_decoding(self.path, self.kind, f"cells {start}-{stop} of {self.source}"):
                block = as_csr(self._matrix[start:stop])
        except READ_ERRORS as err:
            raise InputError(f"{self.path}: cells {start}-{stop} of {self.source} could not be read: {err}") from err
        return self.rebuild(block, start) if self.rebuild else block

    def others(self) -> list[tuple[str, sp.csr_matrix]]:
        """The first cells of every matrix that may hold counts, for the hint when the chosen one does not."""
        heads = []
        for source, element in _h5_candidates(self.file):
            if not _by_row(element):
                continue
            try:
                heads.append((source, as_csr(_row_reader(element, source, self.path)[:HEAD_CELLS])))
            except (*READ_ERRORS, *CODEC_ERRORS):  # a damaged matrix is no hint; the chosen one's error stands
                continue
        return heads

    def target(self):
        import anndata as ad

        return ad.AnnData(obs=self.obs)

    def output(self, path: Path, owned: Sequence[str] = ()):
        """:func:`runner.write.streamed_output`: the copy of the input begins now, in the background."""
        return streamed_output(self.path, path, zarr_to_h5ad if self.kind == ZARR else copy_file, owned)

    def close(self) -> None:
        self._close()


def _h5_candidates(f) -> list[tuple[str, object]]:
    """The matrices of an open h5ad that may hold counts, in the order of :func:`runner.query.candidates`."""
    found = [(f"layers[{name!r}]", f[f"layers/{name}"]) for name in f.get("layers", [])]
    if "raw" in f and "X" in f["raw"]:
        found.append(("raw.X", f["raw/X"]))
    return [*found, *([("X", f["X"])] if "X" in f else [])]


def _counts_element(f, counts_layer: str | None, path: Path) -> tuple[str, object]:
    """Where the counts of an open h5ad or zarr store are (:func:`runner.query.counts_source`), and its element."""
    layers = list(f.get("layers", []))
    source = counts_source(counts_layer, layers, "raw" in f and "X" in f["raw"])
    element = dict(_h5_candidates(f)).get(source)
    if element is None:
        raise InputError(f"{path} has no {source}: an AnnData file holds its matrix in X")
    return source, element


def _by_row(element) -> bool:
    """Whether cells can be read as blocks of rows: a CSR group or a dense 2-d dataset."""
    if _is_group(element):
        return element.attrs.get("encoding-type") == "csr_matrix"
    return len(element.shape) == 2


class CsrRows:
    """The rows of a CSR matrix stored in an h5ad group (``data``, ``indices``, ``indptr``), read a block
    at a time (``rows[start:stop]``) into buffers that are kept and reused.

    Two buffers take turns, so a block stays valid until the second read after it: the block the model
    works on is not overwritten while the next one is read. Reading into fresh arrays instead (as
    anndata's backed sparse dataset does) has the kernel zero every page of every block first: at
    300,000 cells a plain read took 2.9 s into fresh arrays and 1.6 s reusing buffers (docs/design.md).
    """

    def __init__(self, group, path: Path):
        self.data, self.indices = group["data"], group["indices"]
        self.indptr = np.asarray(group["indptr"][...])  # one integer per cell
        self.shape = tuple(int(n) for n in group.attrs["shape"])
        self._buffers: list[tuple[np.ndarray, np.ndarray] | None] = [None, None]
        self._turn = 0
        self.where = f"{path}: {group.name.lstrip('/')}"
        n_indices, n_values = self.indices.shape[0], self.data.shape[0]  # zarr arrays have no len()
        lengths = f"has {n_indices} indices for {n_values} stored values"
        problem = (
            dtype_problem(self.data.dtype)
            or (lengths if n_indices != n_values else "")
            or indptr_problem(self.indptr, self.shape[0], n_values)
        )
        if problem:
            raise InputError(f"{self.where} {problem}; the file is damaged")

    def __getitem__(self, rows: slice) -> sp.csr_matrix:
        start, stop, _ = rows.indices(self.shape[0])
        stop = max(start, stop)
        first, last = int(self.indptr[start]), int(self.indptr[stop])
        data, indices = self._buffer(last - first)
        if last > first:
            _read_into(self.data, first, last, data)
            _read_into(self.indices, first, last, indices)
        problem = indices_problem(indices, self.shape[1])  # checked once per block, as it is read
        if problem:
            raise InputError(f"{self.where} (cells {start}-{stop}) {problem}; the file is damaged")
        indptr = self.indptr[start : stop + 1] - first
        if indices.dtype == np.int32 and last - first <= np.iinfo(np.int32).max:
            indptr = indptr.astype(np.int32)  # else scipy would copy the indices to int64
        return sp.csr_matrix((data, indices, indptr), shape=(stop - start, self.shape[1]), copy=False)

    def _buffer(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """This turn's buffers, grown to hold ``n`` values (by a quarter more, so that they seldom grow)."""
        held = self._buffers[self._turn]
        if held is None or held[0].size < n:
            size = max(n, int(n * 1.25))
            held = self._buffers[self._turn] = (
                np.empty(size, self.data.dtype),
                np.empty(size, self.indices.dtype),
            )
        self._turn = 1 - self._turn
        return held[0][:n], held[1][:n]


def _read_into(array, first: int, last: int, out: np.ndarray) -> None:
    """``array[first:last]`` into ``out``: straight from HDF5 (h5py), through zarr's decoded chunks."""
    if hasattr(array, "read_direct"):
        array.read_direct(out, np.s_[first:last])
    else:
        out[...] = array[first:last]


def _row_reader(element, source: str, path: Path):
    """Something sliced by rows into a matrix: :class:`CsrRows`, or the dense dataset."""
    if not _by_row(element):
        kind = element.attrs.get("encoding-type", "group") if _is_group(element) else element.shape
        raise UsageError(
            f"{source} is stored as {kind}, which cannot be read a block of cells at a time; pass --in-memory, "
            "or rewrite the file with cells as rows (adata.X = adata.X.tocsr(); adata.write_h5ad(...))"
        )
    if _is_group(element):
        return CsrRows(element, path)
    problem = dtype_problem(element.dtype)
    if problem:
        raise InputError(f"{path}: {source} {problem}")
    return element


def stored_cells(path: Path, counts_layer: str | None, kind: str = H5AD) -> tuple[int, bool]:
    """The number of cells of an h5ad file or zarr store, and whether the matrix holding its counts
    (``counts_layer``, ``raw.X`` or ``X``) can be streamed, without reading either."""
    f, close = _open_store(path, kind)
    try:
        obs = f["obs"]
        index = obs[obs.attrs.get("_index", "_index")] if _is_group(obs) else obs
        try:
            _, element = _counts_element(f, counts_layer, path)
        except InputError:  # no matrix: reading it whole says so
            return index.shape[0], False
        return index.shape[0], _by_row(element)
    finally:
        close()


def open_query(path: Path, options: ReadOptions, counts_layer: str | None, backed: bool | None):
    """The query as a source of counts: streamed when ``backed`` (``None``: when it is a large h5ad)."""
    kind = detect_format(path, options)
    if kind not in STREAMED_FORMATS:
        if backed:
            raise UsageError(f"--backed streams h5ad files and zarr stores only; {path.name} is {kind}: drop --backed")
        return _in_memory(path, options, counts_layer, kind)
    if backed is None:
        try:
            n_cells, by_row = stored_cells(path, counts_layer, kind)
        except READ_ERRORS as err:
            raise InputError(f"{path} could not be read as {kind}: {err}. Is it complete (not truncated)?") from err
        backed = n_cells >= STREAM_MIN_CELLS and by_row
        if n_cells >= STREAM_MIN_CELLS and not by_row:
            logger.warning(
                "%s: the counts are not stored by row, so the %d cells are read into memory", path.name, n_cells
            )
    if not backed:
        return _in_memory(path, options, counts_layer, kind)
    try:
        with zarr_decoding(path, kind):
            return StreamedFile(path, counts_layer, kind)
    except READ_ERRORS as err:
        raise InputError(f"{path} could not be opened for streaming: {err}. Is it a complete {kind}?") from err


def _in_memory(path: Path, options: ReadOptions, counts_layer: str | None, kind: str) -> MemoryQuery:
    """The query read whole (:func:`runner.readers.read_input`), its counts as CSR: a matrix too large for the
    memory is refused in one line, here as in the reader."""
    try:
        return MemoryQuery(*read_input(path, options), counts_layer)
    except MemoryError as err:
        raise too_large(path, kind, err) from err
