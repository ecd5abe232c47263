"""Reading a query in any format a user has, into an AnnData of cells x genes (``read_input``).

One function per format; :func:`read_input` finds the format from the file's content (its first
bytes and, for HDF5, its layout), not only its name, and returns the AnnData with a description of
what was found. Every reader raises :class:`runner.errors.InputError` (or ``UsageError`` for an
option that cannot work) with the path and what to do; none writes anything but temporary files.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from runner.errors import InputError, UsageError
from runner.options import CELLS_BY_GENES, GENES_BY_CELLS, ReadOptions

logger = logging.getLogger(__name__)

H5AD = "h5ad"
LOOM = "loom"
TENX_H5 = "10x-h5"
TENX_MTX = "10x-mtx"
ZARR = "zarr"
ARCHIVE = "archive"
TABLE = "table"
HDF5 = "hdf5"


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
GZIP_MAGIC = b"\x1f\x8b"
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
HDF5_SUFFIXES = (".h5ad", ".h5", ".hdf5", ".loom")
TREE_LINES = 40  # lines of an HDF5 tree shown in messages
READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, zlib.error)
CODEC_ERRORS = (RuntimeError,)  # what numcodecs (blosc, zstd, lz4) raises for a zarr chunk it cannot decode
SPARSE_PARTS = ("data", "indices", "indptr")


@dataclass
class InputDescription:
    """What was found in an input: its format, how its matrix was stored, and notes for the user."""

    path: Path | None  # None: an AnnData given in memory
    format: str
    orientation: str = "cells x genes"
    notes: list[str] = field(default_factory=list)


def read_input(path: Path, options: ReadOptions | None = None):
    """Read ``path`` (a file or a 10x folder) into an AnnData of cells x genes.

    Returns
    -------
    ``(adata, description)``: the AnnData as read (X as stored, transposed to cells x genes where
    needed) and an :class:`InputDescription`.
    """
    options = options or ReadOptions()
    kind = detect_format(path, options)
    try:
        return READERS[kind](path, options)
    except READ_ERRORS as err:
        raise InputError(f"{path} could not be read as {kind}: {err}. Is it complete (not truncated)?") from err
    except MemoryError as err:
        raise too_large(path, kind, err) from err


def too_large(path: Path, kind: str, err: MemoryError) -> InputError:
    """The error for a matrix that does not fit in memory (a large query, or a small file declaring a huge one)."""
    what = f" ({str(err).splitlines()[0]})" if str(err) else ""
    hint = (
        "pass --backed to stream it a block of cells at a time (counts stored by row), or check that the file is sound"
        if kind in (H5AD, ZARR)
        else "check that the file is sound, or convert it to h5ad with the counts by row and pass --backed"
    )
    return InputError(f"{path}: its matrix is too large to load in memory{what}: {hint}")


def detect_format(path: Path, options: ReadOptions) -> str:
    """The format of ``path`` from its content: a folder is a 10x matrix folder; else the first bytes."""
    if not path.exists():
        raise UsageError(f"input {path} does not exist")
    if path.is_dir():
        return ZARR if is_zarr_store(path) else TENX_MTX
    if not path.is_file():  # a pipe would block the read below for ever
        raise InputError(f"{path} is not a regular file (a pipe, socket or device): write the data to a file first")
    with open(path, "rb") as fh:
        head = fh.read(512)
    name = path.name.lower()
    stem = name.removesuffix(".gz")
    if head.startswith(HDF5_MAGIC):
        return _hdf5_kind(path, options)
    if name.endswith(HDF5_SUFFIXES):
        what = "a zip archive" if head.startswith(b"PK") else "gzip data" if head.startswith(GZIP_MAGIC) else "text"
        raise InputError(
            f"{path} is not an {path.suffix.lstrip('.')} file (not HDF5; its content looks like {what}). "
            "Check the file, or give it the extension of what it holds (.csv, .tsv, .zip, .tar.gz)."
        )
    if zipfile.is_zipfile(path) or name.endswith((".tar.gz", ".tgz", ".tar", ".zip")):
        return ARCHIVE
    if stem.endswith(TABLE_SUFFIXES):
        return TABLE
    raise InputError(
        f"{path}: unknown input format. cellzoo reads .h5ad, .loom, 10x .h5, 10x matrix folders (and .zip / "
        ".tar.gz of them), .csv/.tsv/.txt tables (optionally .gz), and other HDF5 files with --matrix-key."
    )


ZARR_MARKERS = ("zarr.json", ".zgroup", ".zattrs")  # the root of a zarr store (format 3; format 2)


def is_zarr_store(path: Path) -> bool:
    """Whether the folder ``path`` is a zarr store (as ``AnnData.write_zarr`` writes one), not a 10x folder."""
    return any((path / marker).is_file() for marker in ZARR_MARKERS)


def _hdf5_kind(path: Path, options: ReadOptions) -> str:
    import h5py

    if options.matrix_key:
        return HDF5
    try:
        with h5py.File(path, "r") as f:
            if not options.external_links:
                _check_links(path, f)
            keys = set(f.keys())
            if f.attrs.get("encoding-type") == "anndata" or {"X", "obs", "var"} <= keys:
                return H5AD
            if {"matrix", "row_attrs", "col_attrs"} <= keys:
                return LOOM
            if _tenx_groups(f):
                return TENX_H5
    except READ_ERRORS as err:
        raise InputError(f"{path} is HDF5 but could not be opened: {err}. Is it complete (not truncated)?") from err
    raise InputError(
        f"{path} is HDF5 but not h5ad, loom or 10x: say where the matrix and names are with --matrix-key, "
        f"--var-key and --obs-key. Its tree:\n{hdf5_tree(path)}"
    )


def _check_links(path: Path, f) -> None:
    """Refuse links to other files (external links, virtual datasets), which h5py follows silently, and soft
    links that lead nowhere or in a circle. Only the links are walked (no dataset is read)."""
    import h5py

    def visit(name: str, link) -> str | None:  # a message stops the walk (h5py cannot raise through it)
        if isinstance(link, h5py.ExternalLink):
            return (
                f"{path}: /{name} is a link to {link.filename}:{link.path}, another file; cellzoo reads only the "
                "file it is given. Pass --allow-external-links if that file is meant to be read too"
            )
        if isinstance(link, h5py.SoftLink) and _target(f, name) is None:
            return f"{path}: /{name} is a soft link to {link.path}, which leads nowhere or in a circle"
        node = _target(f, name) if isinstance(link, h5py.HardLink) else None
        if isinstance(node, h5py.Dataset) and node.is_virtual:
            return (
                f"{path}: /{name} is a virtual dataset (its values live in other files); pass "
                "--allow-external-links if those files are meant to be read too"
            )
        return None

    problem = f.visititems_links(visit)
    if problem:
        raise InputError(problem)


def _target(f, name: str):
    """The object a link of ``f`` leads to, or ``None`` (a soft link to nothing, or a circle of links)."""
    try:
        return f[name]
    except (KeyError, RuntimeError):
        return None


def hdf5_tree(path: Path, limit: int = TREE_LINES) -> str:
    """The groups and datasets of an HDF5 file, one per line with shape and dtype (at most ``limit``)."""
    import h5py

    lines: list[str] = []

    def visit(name: str, node) -> None:
        kind = f"{node.shape} {node.dtype}" if isinstance(node, h5py.Dataset) else "group"
        lines.append(f"  /{name}  {kind}")

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    more = [f"  ... {len(lines) - limit} more"] if len(lines) > limit else []
    return "\n".join(lines[:limit] + more)


def _decode(values) -> pd.Index:
    return pd.Index([v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()])


def read_h5ad(path: Path, options: ReadOptions):
    """An h5ad file, in memory or backed (``options.backed``: X stays on disk)."""
    import anndata as ad
    from anndata._io.specs.registry import IORegistryError  # what anndata raises for an unknown encoding

    try:
        adata = ad.read_h5ad(path, backed="r" if options.backed else None)
    except IORegistryError as err:
        raise InputError(
            f"{path}: an element has an encoding anndata does not know ({err}); the file is damaged"
        ) from err
    if options.backed and adata.X is not None and tuple(adata.X.shape) != adata.shape:  # read whole, anndata checks
        adata.file.close()
        raise InputError(
            f"{path}: X is {adata.X.shape[0]} x {adata.X.shape[1]} but obs and var name {adata.n_obs} x "
            f"{adata.n_vars}; the file is damaged"
        )
    return adata, InputDescription(path, H5AD + (" (backed)" if options.backed else ""))


def read_zarr(path: Path, options: ReadOptions):
    """An AnnData zarr store (a folder, as ``AnnData.write_zarr`` writes it), read whole. Its matrices are
    checked for missing chunk files first (:func:`check_zarr_chunks`), and a chunk that cannot be decoded is
    said in one line."""
    import anndata as ad
    import zarr

    if not (path / "X").exists() and not (path / "raw").exists() and not (path / "layers").exists():
        raise InputError(f"{path} is a zarr store but not an AnnData one: it has no X, raw or layers")
    store = zarr.open_group(path, mode="r")
    layers = [f"layers/{name}" for name in store.get("layers", [])]
    for name in [*layers, "raw/X", "X"]:
        if name in store:
            check_zarr_chunks(store[name], path)
    with zarr_decoding(path):
        adata = ad.read_zarr(path)
    return adata, InputDescription(path, ZARR)


@contextlib.contextmanager
def zarr_decoding(path: Path, kind: str = ZARR, where: str = ""):
    """Read from ``path``: a chunk of a zarr store that its codec cannot decode (a truncated or altered chunk
    file) is said in one line; the same exception type from another ``kind`` of input passes unchanged."""
    try:
        yield
    except CODEC_ERRORS as err:
        if kind != ZARR:
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(
            f"{path}: a chunk of {where or 'the store'} could not be decoded ({first}): the store is damaged "
            "(a chunk file truncated or altered); copy it again from its source"
        ) from err


def check_zarr_chunks(element, path: Path) -> None:
    """Refuse a matrix of a zarr store (a sparse group's ``data``, ``indices``, ``indptr``, or a dense array)
    whose chunk files are missing where they cannot be: zarr reads a missing chunk as zeros without a word,
    so a store copied in part would be annotated with counts lost.

    A writer may leave out chunks that hold only zeros (zarr-python 3 does by default: a dense matrix with a
    block of zeros, the ``indptr`` of leading empty cells), so zeros are refused only where they cannot be
    what was written: stored values (``data``; a stored zero is no count) and their genes (``indices``),
    and an ``indptr`` chunk past its leading zeros (which would then decrease), or before a cell holding
    more values than there are genes (the values of the cells of the missing chunk). A dense matrix with
    missing chunks cannot be told from one with blocks of zeros: a warning says so."""
    name = element.name.lstrip("/")
    if hasattr(element, "shape"):  # a dense array
        missing = element.nchunks - element.nchunks_initialized
        if missing:
            logger.warning(
                "%s: %s has %d of its %d chunks absent from the store, read as zeros: a writer that leaves out "
                "chunks of zeros (zarr's default) stores them so, but a store copied in part would lose counts; "
                "check the store if it was copied or moved",
                path,
                name,
                missing,
                element.nchunks,
            )
        return
    if not all(part in element for part in SPARSE_PARTS):
        return  # not a sparse matrix: anndata says what it is
    for part in SPARSE_PARTS:
        array = element[part]
        missing = array.nchunks - array.nchunks_initialized
        if not missing or (part == "indptr" and _leading_zeros(array, element, missing)):
            continue
        raise InputError(
            f"{path}: {name}/{part} has {missing} of its {array.nchunks} chunk files absent from the store, where "
            "the zeros zarr reads instead cannot be what was written (counts would be lost): the store is "
            "incomplete or damaged; copy it again from its source"
        )


def _leading_zeros(indptr, group, missing: int) -> bool:
    """Whether ``missing`` absent chunks of a sparse group's ``indptr`` can be leading chunks of zeros (empty
    cells, or genes, that a writer left out): as many whole chunks of leading zeros, the last value the number
    of stored values, and the first value after the zeros (what the last of those cells holds) no more than
    the genes (or cells) there are."""
    values = np.asarray(indptr[...])
    if not values.size:
        return False
    nonzero = np.flatnonzero(values)
    lead = int(nonzero[0]) if nonzero.size else values.size
    whole = indptr.nchunks if lead == values.size else lead // indptr.chunks[0]
    shape = [int(n) for n in group.attrs.get("shape", (0, 0))]
    n_minor = shape[1] if group.attrs.get("encoding-type") != "csc_matrix" else shape[0]
    ends = values[-1] == group["data"].shape[0]
    return missing <= whole and ends and (lead == values.size or values[lead] <= n_minor)


LOOM_CELL_NAMES = ("CellID", "obs_names", "cell_names", "barcodes")
LOOM_GENE_NAMES = ("Gene", "var_names", "gene_names", "Accession")
LOOM_CHUNK = 4096  # cells read at a time from a loom's dense matrix


def read_loom(path: Path, options: ReadOptions):
    """A loom file: ``/matrix`` genes x cells (dense), names in ``/col_attrs/CellID`` and ``/row_attrs/Gene``.

    Read with h5py (no loompy needed), a block of cells at a time into a sparse matrix. The other
    row attributes become ``var`` columns (e.g. ``Accession``, the Ensembl ids).
    """
    import h5py

    with h5py.File(path, "r") as f:
        rows, cols = f["row_attrs"], f["col_attrs"]
        gene_key = next((k for k in LOOM_GENE_NAMES if k in rows), None)
        cell_key = next((k for k in LOOM_CELL_NAMES if k in cols), None)
        if gene_key is None:
            raise InputError(f"{path.name} has no gene names: none of row_attrs/{', '.join(LOOM_GENE_NAMES)}")
        matrix = f["matrix"]
        blocks = [sp.csr_matrix(matrix[:, i : i + LOOM_CHUNK].T) for i in range(0, matrix.shape[1], LOOM_CHUNK)]
        var = pd.DataFrame(
            {
                k: _decode(rows[k][:])
                for k in rows
                if k != gene_key and rows[k].ndim == 1 and len(rows[k]) == matrix.shape[0]
            }
        )
        var.index = pd.Index(_decode(rows[gene_key][:]))
        cells = _decode(cols[cell_key][:]) if cell_key else pd.Index([str(i) for i in range(matrix.shape[1])])
    x = sp.vstack(blocks).tocsr() if blocks else sp.csr_matrix((0, len(var)))
    return _anndata(x, cells, var), InputDescription(path, LOOM, "genes x cells (loom), transposed on reading")


def _tenx_groups(f) -> list[str]:
    return [k for k in f if hasattr(f[k], "keys") and {"barcodes", *SPARSE_PARTS, "shape"} <= set(f[k].keys())]


def read_10x_h5(path: Path, options: ReadOptions):
    """A Cell Ranger HDF5 file: v3 (``/matrix`` with ``features``) or v2 (one group per genome).

    A file with several genomes needs ``options.genome``; the error lists them. In v3 files only the
    ``Gene Expression`` features are kept (antibody capture and others are dropped, with a note).
    """
    import h5py

    notes = []
    with h5py.File(path, "r") as f:
        groups = _tenx_groups(f)
        if "matrix" in groups:  # v3
            group, version = f["matrix"], "v3"
            feats = group["features"]
            ids, names = _decode(feats["id"][:]), _decode(feats["name"][:])
            types = (
                _decode(feats["feature_type"][:])
                if "feature_type" in feats
                else pd.Index(["Gene Expression"] * len(ids))
            )
            genomes = _decode(feats["genome"][:]) if "genome" in feats else pd.Index([""] * len(ids))
            keep = _choose_genome(path, pd.unique(genomes), options.genome) == genomes
            if (types != "Gene Expression").any():
                notes.append(f"dropped {int((keep & (types != 'Gene Expression')).sum())} non-gene-expression features")
                keep &= types == "Gene Expression"
        else:  # v2: one group per genome
            genome, version = _choose_genome(path, groups, options.genome), "v2"
            group = f[genome]
            ids, names = _decode(group["genes"][:]), _decode(group["gene_names"][:])
            genomes = pd.Index([genome] * len(ids))
            keep = np.ones(len(ids), dtype=bool)
        n_genes, n_cells = (int(v) for v in group["shape"][:])
        barcodes = _decode(group["barcodes"][:])
        if (n_genes, n_cells) != (len(ids), len(barcodes)):  # checked before the shape sizes anything
            raise InputError(
                f"{path}: {group.name.lstrip('/')}/shape says {n_genes} features x {n_cells} barcodes, but the file "
                f"lists {len(ids)} features and {len(barcodes)} barcodes; the file is damaged"
            )
        parts = [group[p][:] for p in SPARSE_PARTS]
    matrix = sp.csc_matrix(tuple(parts), shape=(n_genes, n_cells)).T.tocsr()[:, np.flatnonzero(keep)]
    var = pd.DataFrame({"gene_ids": ids[keep], "feature_types": "Gene Expression", "genome": genomes[keep]})
    var.index = pd.Index(names[keep], name=None)
    return _anndata(matrix, barcodes, var), InputDescription(
        path, f"{TENX_H5} ({version})", "genes x cells (10x), transposed on reading", notes
    )


def tenx_genomes(path: Path) -> list[str]:
    """The genomes of a Cell Ranger HDF5 file (v3: the ``genome`` feature column; v2: its groups)."""
    import h5py

    with h5py.File(path, "r") as f:
        groups = _tenx_groups(f)
        if "matrix" not in groups:
            return groups
        features = f["matrix/features"]
        return list(dict.fromkeys(_decode(features["genome"][:]))) if "genome" in features else []


def _choose_genome(path: Path, genomes, wanted: str | None) -> str:
    genomes = [str(g) for g in genomes]
    if wanted is not None:
        if wanted not in genomes:
            raise UsageError(f"--genome {wanted!r} is not in {path.name}; its genomes: {', '.join(genomes)}")
        return wanted
    if len(genomes) > 1:
        raise UsageError(f"{path.name} holds several genomes: {', '.join(genomes)}; choose one with --genome NAME")
    return genomes[0]


def _anndata(matrix: sp.spmatrix, obs_names, var: pd.DataFrame):
    import anndata as ad

    adata = ad.AnnData(X=sp.csr_matrix(matrix, dtype=np.float32), var=var)
    adata.obs_names = pd.Index(np.asarray(obs_names).astype(str))
    return adata


def _find_one(folder: Path, pattern: str, what: str) -> Path | None:
    found = sorted(p for p in folder.iterdir() if re.search(pattern, p.name))
    if len(found) > 1:
        raise InputError(f"{folder} holds several {what} files ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def _read_tsv(path: Path) -> pd.DataFrame:
    """A headerless tab-separated file of names (an empty file is an empty table)."""
    try:
        return pd.read_csv(path, sep="\t", header=None, dtype=str)
    except pd.errors.EmptyDataError:
        return pd.DataFrame({0: pd.Series([], dtype=str)})


def read_10x_mtx(path: Path, options: ReadOptions):
    """A 10x matrix folder: ``matrix.mtx[.gz]``, ``barcodes.tsv[.gz]``, ``features.tsv[.gz]`` or ``genes.tsv[.gz]``.

    File names may carry a prefix (``GSM123_matrix.mtx.gz``, as GEO serves them). The matrix is
    genes x cells (10x); a cells x genes matrix is recognised by its shape.
    """
    from scipy.io import mmread

    matrix_file = _find_one(path, r"matrix\.mtx(\.gz)?$", "matrix.mtx")
    barcodes_file = _find_one(path, r"barcodes\.tsv(\.gz)?$", "barcodes.tsv")
    features_file = _find_one(path, r"(features|genes)\.tsv(\.gz)?$", "features.tsv / genes.tsv")
    missing = [n for n, f in (("matrix.mtx", matrix_file), ("barcodes.tsv", barcodes_file)) if f is None]
    missing += ["features.tsv or genes.tsv"] if features_file is None else []
    if missing:
        raise InputError(
            f"{path} is not a 10x matrix folder: it lacks {', '.join(missing)} (found: "
            f"{', '.join(sorted(p.name for p in path.iterdir())) or 'nothing'})"
        )
    barcodes = _read_tsv(barcodes_file).iloc[:, 0]
    features = _read_tsv(features_file)
    n_genes, n_cells = len(features), len(barcodes)
    _check_mtx_header(matrix_file, n_genes, n_cells)  # before its header sizes anything
    with _open(matrix_file, "rb") as fh:
        matrix = sp.csr_matrix(mmread(fh))
    if matrix.shape == (n_genes, n_cells):
        matrix, orientation = matrix.T.tocsr(), "genes x cells (10x), transposed on reading"
    else:
        orientation = "cells x genes"
    names = features.iloc[:, 1] if features.shape[1] > 1 else features.iloc[:, 0]
    var = pd.DataFrame({"gene_ids": features.iloc[:, 0].to_numpy()})
    if features.shape[1] > 2:
        var["feature_types"] = features.iloc[:, 2].to_numpy()
    var.index = pd.Index(names.astype(str).to_numpy())
    return _anndata(matrix, barcodes, var), InputDescription(path, TENX_MTX, orientation)


MTX_MIN_ENTRY_BYTES = 2  # the shortest entry of a Matrix Market file: a value and a newline ("1\n")
DEFLATE_MAX_RATIO = 1032  # the most that gzip (deflate) expands a byte to


def _check_mtx_header(matrix_file: Path, n_genes: int, n_cells: int) -> None:
    """Refuse a Matrix Market file whose header (read alone) declares a shape that is not the features x barcodes
    of its folder (either way round), or more entries than the matrix or the file can hold: scipy allocates
    what the header says, so 71 bytes declaring 20 billion rows would ask for 149 GiB."""
    n_rows, n_columns, entries = _mtx_header(matrix_file)
    if (n_rows, n_columns) not in ((n_genes, n_cells), (n_cells, n_genes)):
        raise InputError(
            f"{matrix_file.name} is {n_rows} x {n_columns} (its header) but there are {n_genes} features and "
            f"{n_cells} barcodes: the files do not belong together"
        )
    size = matrix_file.stat().st_size * (DEFLATE_MAX_RATIO if _gzipped(matrix_file) else 1)
    if entries > n_rows * n_columns or entries > size // MTX_MIN_ENTRY_BYTES:
        raise InputError(
            f"{matrix_file.name} declares {entries} entries in its header, more than a {n_rows} x {n_columns} "
            f"matrix or its {matrix_file.stat().st_size} bytes can hold; the file is damaged"
        )


def _mtx_header(matrix_file: Path) -> tuple[int, int, int]:
    """The rows, columns and entries a Matrix Market file declares: its banner, comments, then its size line
    (read here: scipy's ``mminfo`` on an open file aborted the process on a large one)."""
    with _open(matrix_file, "rt", encoding="latin-1") as fh:
        banner = fh.readline().split()
        if len(banner) < 3 or banner[0].lower() != "%%matrixmarket" or banner[2].lower() not in ("coordinate", "array"):
            raise InputError(
                f"{matrix_file.name} is not a Matrix Market file (its first line: {' '.join(banner)[:80]!r})"
            )
        line = fh.readline()
        while line.startswith("%") or (line and not line.strip()):
            line = fh.readline()
    size = line.split()
    coordinate = banner[2].lower() == "coordinate"
    if len(size) != (3 if coordinate else 2) or not all(v.isdigit() for v in size):
        raise InputError(f"{matrix_file.name}: its size line {line.strip()[:80]!r} is not rows, columns and entries")
    n_rows, n_columns = int(size[0]), int(size[1])
    return n_rows, n_columns, int(size[2]) if coordinate else n_rows * n_columns


def _gzipped(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _open(path: Path, mode: str, **kwargs):
    """``path`` opened for reading, through gzip when its name ends with ``.gz``."""
    return (gzip.open if _gzipped(path) else open)(path, mode, **kwargs)


def read_archive(path: Path, options: ReadOptions):
    """A zip or tar(.gz) of a 10x matrix folder (or of one readable file), unpacked safely to a temporary folder.

    Absolute paths, ``..``, links and archives that unpack to more than 2 GB are refused (the rules
    of model archives, :func:`runner.archive.safe_extract`).
    """
    from runner.archive import safe_extract

    with tempfile.TemporaryDirectory(prefix="cellzoo-input-") as tmp:
        target = Path(tmp)
        safe_extract(path, target, error=InputError)
        folders = sorted({p.parent for p in target.rglob("*") if re.search(r"matrix\.mtx(\.gz)?$", p.name)})
        files = [p for p in target.rglob("*") if p.is_file() and not p.name.startswith(".")]
        if len(folders) == 1:
            inner = folders[0]
        elif not folders and len(files) == 1:
            inner = files[0]
        else:
            found = ", ".join(str(p.relative_to(target)) for p in (folders or files)[:10]) or "nothing"
            raise InputError(
                f"{path} should hold one 10x matrix folder (matrix.mtx, barcodes.tsv, features.tsv) or one "
                f"readable file; found: {found}"
            )
        adata, inner_description = read_input(inner, options)
        if options.backed:
            adata = adata.to_memory()
    inner_name = inner.relative_to(target)
    description = InputDescription(
        path, f"{ARCHIVE} of {inner_description.format} ({inner_name})", inner_description.orientation
    )
    description.notes += inner_description.notes
    return adata, description


def _read_table_frame(path: Path) -> pd.DataFrame:
    stem = path.name.lower().removesuffix(".gz")
    if stem.endswith(".csv"):
        sep = ","
    elif stem.endswith(".tsv"):
        sep = "\t"
    else:
        with _open(path, "rt") as fh:
            first = fh.readline()
        sep = "\t" if "\t" in first else "," if "," in first else r"\s+"
    # the header is read apart, as written: pandas renames a repeated column name (CD3E, CD3E.1), so that a gene
    # split over two columns would never be summed into one (genes.align_genes sums the genes that share a name)
    header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
    names = list(header.iloc[0]) if len(header) else []
    try:
        frame = pd.read_csv(path, sep=sep, header=None, skiprows=1, index_col=0)
    except pd.errors.EmptyDataError:  # a header and no rows: an empty table, refused as such
        return pd.DataFrame(columns=names[1:])
    if len(names) == frame.shape[1] + 1:  # a name over the cell names too (pandas, most tools)
        frame.index.name, frame.columns = names[0] or None, pd.Index(names[1:])
    elif len(names) == frame.shape[1]:  # none over the cell names (R's write.table)
        frame.index.name, frame.columns = None, pd.Index(names)
    else:
        raise InputError(
            f"{path} has {len(names)} names in its header row but {frame.shape[1] + 1} fields in its rows: a table "
            "holds one name per column (the first, over the cell or gene names, may be left out)"
        )
    return frame


def read_table(path: Path, options: ReadOptions):
    """A dense text table (csv, tsv, txt; optionally gzipped), cells x genes or genes x cells.

    The side whose names are known gene symbols or Ensembl ids (human or mouse GENCODE tables) is
    the genes; ``options.orientation`` sets it and ``options.transpose`` flips what was detected.
    """
    from runner.genes import known_gene_fraction
    from runner.query import MIN_GENE_SHARE

    frame = _read_table_frame(path)
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise InputError(f"{path} holds an empty table ({frame.shape[0]} rows x {frame.shape[1]} columns)")
    columns, rows = known_gene_fraction(frame.columns), known_gene_fraction(frame.index)
    orientation = options.orientation
    how = "set by --orientation"
    if orientation is None:
        if max(columns, rows) < MIN_GENE_SHARE:
            raise InputError(
                f"cannot tell whether {path.name} is cells x genes or genes x cells: only {columns:.0%} of its "
                f"column names and {rows:.0%} of its row names are known human or mouse genes. Pass "
                f"--orientation {CELLS_BY_GENES} (genes in the header) or --orientation {GENES_BY_CELLS}."
            )
        orientation = CELLS_BY_GENES if columns >= rows else GENES_BY_CELLS
        how = f"detected: {max(columns, rows):.0%} of the {'columns' if columns >= rows else 'rows'} are gene names"
    if options.transpose:
        orientation = GENES_BY_CELLS if orientation == CELLS_BY_GENES else CELLS_BY_GENES
        how += ", flipped by --transpose"
    if orientation == GENES_BY_CELLS:
        frame = frame.T
    non_numeric = [str(c) for c, t in frame.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if non_numeric:
        raise InputError(
            f"{path.name} holds values that are not numbers (in {', '.join(non_numeric[:3])}); a count "
            "table holds numbers only, with names in the first row and column"
        )
    var = pd.DataFrame(index=pd.Index(frame.columns.astype(str)))
    adata = _anndata(sp.csr_matrix(frame.to_numpy(dtype=np.float32)), frame.index, var)
    return adata, InputDescription(path, TABLE, f"{orientation.replace('-by-', ' x ')} ({how})")


def read_hdf5(path: Path, options: ReadOptions):
    """Any HDF5 file, with ``--matrix-key`` (a 2-d dataset, or a group of data/indices/indptr), ``--var-key``
    (gene names) and optionally ``--obs-key`` (cell names). The orientation comes from the lengths of
    the names, or ``--orientation`` when they cannot tell.
    """
    import h5py

    if not options.var_key:
        raise UsageError("--var-key (the path of the gene names) is needed with --matrix-key")
    with h5py.File(path, "r") as f:
        for flag, key in (
            ("--matrix-key", options.matrix_key),
            ("--var-key", options.var_key),
            ("--obs-key", options.obs_key),
        ):
            if key and key not in f:
                raise InputError(f"{flag} {key!r} is not in {path.name}. Its tree:\n{hdf5_tree(path)}")
        genes = _decode(f[options.var_key][:])
        cells = _decode(f[options.obs_key][:]) if options.obs_key else None
        node = f[options.matrix_key]
        if hasattr(node, "keys"):
            matrix = _sparse_from_group(node, len(genes), cells)
        elif node.ndim == 2:
            matrix = sp.csr_matrix(node[:])
        else:
            raise InputError(f"--matrix-key {options.matrix_key!r} is a {node.ndim}-d dataset, not a matrix")
    orientation = options.orientation
    if orientation is None:
        if matrix.shape[1] == len(genes) and (
            matrix.shape[0] != len(genes) or cells is None or len(cells) == matrix.shape[0]
        ):
            orientation = CELLS_BY_GENES
        elif matrix.shape[0] == len(genes):
            orientation = GENES_BY_CELLS
        else:
            raise InputError(
                f"the matrix {options.matrix_key!r} is {matrix.shape[0]} x {matrix.shape[1]}, but "
                f"{options.var_key!r} names {len(genes)} genes: neither side matches"
            )
    if options.transpose:
        orientation = GENES_BY_CELLS if orientation == CELLS_BY_GENES else CELLS_BY_GENES
    if orientation == GENES_BY_CELLS:
        matrix = matrix.T.tocsr()
    if matrix.shape[1] != len(genes) or (cells is not None and len(cells) != matrix.shape[0]):
        raise InputError(
            f"the matrix is {matrix.shape[0]} cells x {matrix.shape[1]} genes as oriented ({orientation}), but there "
            f"are {len(genes)} gene names{f' and {len(cells)} cell names' if cells is not None else ''}"
        )
    cells = cells if cells is not None else pd.Index([str(i) for i in range(matrix.shape[0])])
    adata = _anndata(matrix, cells, pd.DataFrame(index=genes))
    return adata, InputDescription(path, HDF5, orientation.replace("-by-", " x "))


def _sparse_from_group(group, n_genes: int, cells: pd.Index | None) -> sp.csr_matrix:
    """A compressed sparse matrix stored as data/indices/indptr (with a shape dataset or attribute, if any)."""
    missing = [p for p in SPARSE_PARTS if p not in group]
    if missing:
        raise InputError(f"{group.name} is a group without {', '.join(missing)}: not a sparse matrix")
    data, indices, indptr = (group[p][:] for p in SPARSE_PARTS)
    shape = group["shape"][:] if "shape" in group else group.attrs.get("shape", group.attrs.get("h5sparse_shape"))
    encoding = str(group.attrs.get("encoding-type", group.attrs.get("h5sparse_format", "")))
    n_major = len(indptr) - 1
    n_minor = int(indices.max()) + 1 if len(indices) else 0
    if shape is None:
        other = n_genes if n_major != n_genes else (len(cells) if cells is not None else n_minor)
        shape = (n_major, max(other, n_minor))
    shape = tuple(int(v) for v in shape)
    if "csc" in encoding or (not encoding and shape[0] != n_major):
        return sp.csc_matrix((data, indices, indptr), shape=shape).tocsr()
    return sp.csr_matrix((data, indices, indptr), shape=shape)


READERS = {
    H5AD: read_h5ad,
    LOOM: read_loom,
    TENX_H5: read_10x_h5,
    TENX_MTX: read_10x_mtx,
    ZARR: read_zarr,
    ARCHIVE: read_archive,
    TABLE: read_table,
    HDF5: read_hdf5,
}
