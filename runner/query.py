"""The checks on a query before any model runs: its raw counts, its genes and species, its cells."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from runner.errors import InputError, UsageError
from runner.genes import (
    Alignment,
    Species,
    align_genes,
    check_overlap,
    detect_species,
    id_type,
    known_gene_fraction,
)
from runner.options import CheckOptions

logger = logging.getLogger(__name__)

COUNT_CHECK_CHUNK = 1 << 18  # values checked for integrality at a time (every value is; chunks keep it in cache)
INTEGER_TOLERANCE = 1e-6  # values this close to an integer are counts written as floats (e.g. 0.999999999)
LOG_MAX = 30.0  # non-integer data whose maximum is below this looks log-transformed
MIN_GENE_SHARE = 0.2  # names of which this share are known genes are gene names
TOTALS_SPREAD = 1e-3  # non-integer data whose cell totals vary less than this (relative) looks normalised
NUMERIC_KINDS = "biuf"  # numpy kinds of values that may be counts: bool, signed and unsigned integers, floats


def as_csr(x) -> sp.csr_matrix:
    """Any matrix AnnData holds (dense, sparse, backed) as CSR, in memory (float16, which scipy does not
    take, as float32)."""
    if hasattr(x, "to_memory"):
        x = x.to_memory()
    elif not (sp.issparse(x) or isinstance(x, np.ndarray)):
        x = x[()]
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    return sp.csr_matrix(x)


def dtype_problem(dtype) -> str:
    """Why values of ``dtype`` cannot be counts ('' when they can): complex numbers, text, objects."""
    if np.dtype(dtype).kind in NUMERIC_KINDS:
        return ""
    return f"holds values of type {np.dtype(dtype)}, not real numbers: raw counts are integers"


def indptr_problem(indptr: np.ndarray, n_rows: int, n_values: int) -> str:
    """Why the index pointer of a compressed sparse matrix of ``n_rows`` rows and ``n_values`` stored values
    is broken ('' when it is sound). Vectorised: one pass over ``indptr``."""
    if len(indptr) != n_rows + 1:
        return f"has an index pointer of {len(indptr)} entries for {n_rows} rows (expected {n_rows + 1})"
    if indptr[0] != 0 or indptr[-1] > n_values:
        return f"has an index pointer from {indptr[0]} to {indptr[-1]}, outside its {n_values} stored values"
    if n_rows and (np.diff(indptr) < 0).any():
        return f"has a decreasing index pointer (first at row {int(np.argmax(np.diff(indptr) < 0))})"
    return ""


def indices_problem(indices: np.ndarray, n_columns: int) -> str:
    """Why the column indices of (a block of) a compressed sparse matrix are broken ('' when they are not):
    an index below 0 or past the last column. One reduction that allocates nothing: read as unsigned, a
    negative index is larger than any column (10,000 cells x 2,500 values: 15 ms, where a min and a max took 27)."""
    if not indices.size:
        return ""
    unsigned = indices.view(indices.dtype.str.replace("i", "u")) if indices.dtype.kind == "i" else indices
    if unsigned.max() < n_columns:
        return ""
    return f"holds column indices outside 0..{n_columns - 1} (from {indices.min()} to {indices.max()})"


def structure_problem(x) -> str:
    """Why an in-memory matrix (dense, CSR or CSC) cannot be read as counts ('' when it can): its type, or a
    broken sparse structure (which scipy accepts, moving a count to another gene or failing later)."""
    problem = dtype_problem(x.dtype)
    if problem or not sp.issparse(x) or x.format not in ("csr", "csc"):
        return problem
    n_major, n_minor = x.shape if x.format == "csr" else x.shape[::-1]
    if len(x.indices) != len(x.data):
        return f"has {len(x.indices)} indices for {len(x.data)} stored values"
    return indptr_problem(x.indptr, n_major, len(x.data)) or indices_problem(x.indices, n_minor)


def candidates(adata) -> list[tuple[str, object, pd.DataFrame]]:
    """Where raw counts may be, in the order they are looked for: the layers, ``raw.X``, ``X``."""
    found = [(f"layers[{name!r}]", adata.layers[name], adata.var) for name in adata.layers]
    if adata.raw is not None:
        found.append(("raw.X", adata.raw.X, adata.raw.var))
    return [*found, ("X", adata.X, adata.var)]


def row_sums(matrix: sp.csr_matrix) -> np.ndarray:
    """Each cell's total; 64-bit integer counts are summed as float64 (in their own type, counts near 2**63
    would wrap around to 0 and the cell be taken as empty). Other types sum without overflow in scipy's."""
    if matrix.dtype.kind in "iu" and matrix.dtype.itemsize == 8:
        matrix = sp.csr_matrix((matrix.data.astype(np.float64), matrix.indices, matrix.indptr), shape=matrix.shape)
    return np.asarray(matrix.sum(axis=1)).ravel()


def _rounded_chunks(values: np.ndarray):
    """Each chunk of ``values`` (floats) and its values rounded, into one reused buffer: the checks of every
    value below stay in cache and allocate nothing per value."""
    buffer = np.empty(min(COUNT_CHECK_CHUNK, values.size), values.dtype)
    for start in range(0, values.size, COUNT_CHECK_CHUNK):
        chunk = values[start : start + COUNT_CHECK_CHUNK]
        yield chunk, np.rint(chunk, out=buffer[: chunk.size])


def _fractional(values: np.ndarray) -> np.ndarray:
    """Values farther than ``INTEGER_TOLERANCE`` from an integer (those of the first chunk that has any; empty
    when there are none). Every value is checked, not a sample: normalised cells after millions of counts are
    not rounded into counts silently. 10,000 cells x 2,000 values of float32: 9 ms, against 4 ms for the first
    2 million values sampled before; :func:`checked_counts` of that block takes 21 ms, against 26 ms before (its
    rounding pass is chunked too, and skipped for integer types, which hold integers)."""
    if values.dtype.kind != "f":
        return values[:0]
    for chunk, rounded in _rounded_chunks(values):
        distance = np.abs(np.subtract(chunk, rounded, out=rounded), out=rounded)
        if np.fmax.reduce(distance) > INTEGER_TOLERANCE:  # fmax: a NaN hides no fractional value
            return chunk[distance > INTEGER_TOLERANCE]
    return values[:0]


def _inexact(values: np.ndarray) -> bool:
    """Whether any value (floats) is not exactly an integer: counts written as floats that need rounding."""
    return any(not np.array_equal(chunk, rounded) for chunk, rounded in _rounded_chunks(values))


def counts_problem(matrix: sp.csr_matrix) -> str:
    """Why ``matrix`` is not raw counts ('' when it is): empty, NaN, negative, or non-integer values."""
    values = matrix.data
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        return f"is empty ({matrix.shape[0]} cells x {matrix.shape[1]} genes)"
    # two reductions that allocate nothing find NaN (it propagates), infinities and negative values
    lowest, highest = (values.min(), values.max()) if values.size else (0, 0)
    if not (np.isfinite(lowest) and np.isfinite(highest)):
        n = int((~np.isfinite(values)).sum())
        return f"holds NaN or infinite values ({n} of them); raw counts are finite integers"
    if lowest < 0:
        return f"holds negative values ({int((values < 0).sum())}, min {lowest:.3g}): not raw counts"
    fractional = _fractional(values)
    if not fractional.size:
        return ""
    totals = row_sums(matrix)
    if totals.size > 1 and totals.std() <= TOTALS_SPREAD * totals.mean():
        looks = f"normalised: every cell sums to {totals.mean():.6g}"
    elif values.max() < LOG_MAX:
        looks = f"log-transformed (max {values.max():.3g})"
    else:
        looks = "normalised or scaled"
    return f"holds non-integer values (e.g. {fractional[0]:.4g}): it looks {looks}, not raw counts"


def describe_values(matrix: sp.csr_matrix) -> str:
    """What the values of a matrix look like, in one line (for ``cellzoo inspect``)."""
    if matrix.nnz == 0:
        return "all zero"
    values = matrix.data
    integer = not _fractional(values).size
    totals = row_sums(matrix)
    return (
        f"{'integers' if integer else 'non-integer values'}, min {np.nanmin(values):.4g}, max {np.nanmax(values):.4g}, "
        f"median {np.nanmedian(totals):.5g} per cell, {matrix.nnz / np.prod(matrix.shape):.1%} non-zero"
    )


def counts_source(layer: str | None, layers, has_raw: bool) -> str:
    """Where the raw counts are read from: the named layer, else ``raw.X``, else ``X``."""
    if layer is not None:
        if layer not in layers:
            raise UsageError(
                f"--counts-layer {layer!r} is not a layer of the input; layers: {', '.join(layers) or 'none'}"
            )
        return f"layers[{layer!r}]"
    return "raw.X" if has_raw else "X"


def checked_counts(matrix: sp.csr_matrix, source: str, others) -> sp.csr_matrix:
    """``matrix`` (cells of ``source``) checked to look like raw counts; near-integers rounded, in a copy.

    Values within 1e-6 of an integer (counts written as floats by a text export) are rounded. Data
    that are not counts are refused, naming a matrix among ``others`` (a callable giving
    ``(source, matrix)`` pairs of the other candidates) that holds counts when there is one.
    """
    problem = counts_problem(matrix)
    if problem:
        hint = "" if matrix.shape[0] * matrix.shape[1] == 0 else f" {_counts_hint(others(), source)}"
        raise InputError(f"{source} {problem}.{hint}")
    if matrix.nnz and matrix.dtype.kind == "f" and _inexact(matrix.data):
        matrix = matrix.copy()
        matrix.data = np.round(matrix.data)
    return matrix


# obs columns holding each cell's library size (scanpy, anndata tutorials, Seurat, Symphony, ...)
LIBRARY_SIZE_COLUMNS = ("total_counts", "n_counts", "nCount_RNA", "nUMI", "n_umi", "total_UMIs", "library_size")
TARGET_SUMS = (1e4, 1e6, 1e5, 1e3)  # CP10k (scanpy's tutorials, Seurat, Symphony), CPM, ...
REBUILD_TOLERANCE = 1e-4  # rebuilt counts this close to an integer (relative; measured on float32 log1p: 5e-7)


class RebuiltCounts:
    """Raw counts rebuilt from log1p-normalised values and the library sizes in ``obs``.

    A query stored as ``x = log1p(counts / size * target_sum)`` (scanpy's ``normalize_total`` + ``log1p``,
    Seurat's ``LogNormalize``, Symphony) with each cell's library size in ``obs`` (``nUMI``, ``n_counts``,
    ``total_counts``, ...) holds its counts exactly: ``counts = expm1(x) * size / target_sum``. The target
    sum is a usual constant (:data:`TARGET_SUMS`) or, where the cells were normalised to another sum (scanpy's
    default, the median), each cell's own sum of ``expm1(x)``. Every rebuilt value must come back an integer
    (within :data:`REBUILD_TOLERANCE`, relative), else the block is refused: the rebuild is exact or not made.
    """

    def __init__(self, source: str, column: str, sizes: np.ndarray, target_sum: float | None):
        self.source, self.column, self.sizes, self.target_sum = source, column, sizes, target_sum
        self.max_deviation = 0.0  # the largest relative distance to an integer seen so far

    def deviation(self, matrix: sp.csr_matrix, start: int) -> tuple[sp.csr_matrix, float]:
        """The rows ``start:`` of ``matrix`` (log1p values) as unrounded counts, and their largest relative
        distance to an integer."""
        expm1 = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
        expm1.data = np.expm1(expm1.data)
        sizes = self.sizes[start : start + matrix.shape[0]]
        if self.target_sum is None:
            sums = row_sums(expm1)
            scale = np.divide(sizes, sums, out=np.zeros_like(sizes), where=sums > 0)
        else:
            scale = sizes / self.target_sum
        counts = sp.csr_matrix(sp.diags(scale) @ expm1)
        values = counts.data
        nearest = np.round(values)
        deviation = float((np.abs(values - nearest) / np.maximum(nearest, 1)).max()) if values.size else 0.0
        return counts, deviation

    def __call__(self, matrix: sp.csr_matrix, start: int) -> sp.csr_matrix:
        """The raw counts of rows ``start:`` given their log1p values ``matrix``; refused unless integers."""
        counts, deviation = self.deviation(matrix, start)
        if deviation > REBUILD_TOLERANCE:
            raise InputError(
                f"{self.source} looks log1p-normalised and obs[{self.column!r}] holds library sizes, but the counts "
                f"rebuilt from them (expm1({self.source}) * {self.column} / {self._target()}) are not integers in "
                f"cells {start}-{start + matrix.shape[0]} (a value {deviation:.2g} from one): pass --counts-layer "
                "with the layer that holds the raw counts"
            )
        self.max_deviation = max(self.max_deviation, deviation)
        counts.data = np.round(counts.data)
        counts.eliminate_zeros()
        return counts

    def _target(self) -> str:
        return f"{self.target_sum:g}" if self.target_sum else "the cell's sum of expm1"

    def describe(self) -> str:
        """What was done, for the summary and ``uns[K]['params']['counts']``."""
        return (
            f"{self.source} is log1p-normalised: raw counts rebuilt as expm1({self.source}) * obs[{self.column!r}] / "
            f"{self._target()} (integers within {self.max_deviation:.1g}, relative)"
        )


def _smallest_per_cell(counts: sp.csr_matrix) -> np.ndarray:
    """Each non-empty cell's smallest non-zero value, rounded."""
    counts = sp.csr_matrix(counts)
    counts.eliminate_zeros()
    starts = counts.indptr[:-1][np.diff(counts.indptr) > 0]
    return np.round(np.minimum.reduceat(counts.data, starts)) if starts.size else np.zeros(0)


def rebuilt_counts(head: sp.csr_matrix, obs: pd.DataFrame, source: str) -> RebuiltCounts | None:
    """How to rebuild the raw counts of ``source`` (:class:`RebuiltCounts`), judged on its first cells ``head``:
    ``None`` unless it holds log1p-like values (non-negative, non-integer, below :data:`LOG_MAX`) and a library
    size column of ``obs`` makes them integers."""
    values = head.data
    if not values.size or not _fractional(values).size or values.min() < 0 or values.max() >= LOG_MAX:
        return None
    tried = []
    for column in (c for c in LIBRARY_SIZE_COLUMNS if c in obs.columns):
        if not pd.api.types.is_numeric_dtype(obs[column].dtype):
            continue
        sizes = obs[column].to_numpy(dtype=np.float64)
        if not np.isfinite(sizes).all() or (sizes < 0).any():
            continue
        tried.append(column)
        for target_sum in (*TARGET_SUMS, None):
            rebuild = RebuiltCounts(source, column, sizes, target_sum)
            counts, deviation = rebuild.deviation(head, 0)
            # a target sum that divides the true one also gives integers, multiples of the counts: the true
            # counts are those whose smallest value is 1 in most cells (any cell with a gene seen once)
            if deviation <= REBUILD_TOLERANCE and np.median(_smallest_per_cell(counts)) == 1:
                logger.info("%s: log1p-normalised, counts rebuilt with obs[%r]", source, column)
                return rebuild
    if tried:
        logger.warning(
            "%s is not integer, and the library sizes in obs (%s) do not rebuild integer counts from it as "
            "log1p(counts / size * target sum): not rebuilt",
            source,
            ", ".join(tried),
        )
    return None


def candidate_matrices(adata) -> list[tuple[str, sp.csr_matrix]]:
    """:func:`candidates` as CSR matrices, for the hint when the chosen matrix does not hold counts."""
    return [(source, as_csr(x)) for source, x, _ in candidates(adata) if x is not None and not structure_problem(x)]


def counts_matrix(adata, layer: str | None = None) -> tuple[str, object, pd.DataFrame]:
    """Where the raw counts of an in-memory AnnData are (:func:`counts_source`): source, matrix, its var;
    refused when absent or damaged (:func:`structure_problem`)."""
    source = counts_source(layer, adata.layers, adata.raw is not None)
    found = next(found for found in candidates(adata) if found[0] == source)
    if found[1] is None:
        raise InputError(f"the input has no {source}: an h5ad file holds its matrix in X")
    problem = structure_problem(found[1])
    if problem:
        raise InputError(f"{source} {problem}; the file is damaged")
    return found


def _counts_hint(others, failed: str) -> str:
    """Where the counts may be instead: a layer (or raw.X) that holds counts, else the general advice."""
    layers = []
    for source, matrix in others:
        layers += [source[8:-2]] if source.startswith("layers") else []
        if source != failed and not counts_problem(matrix):
            flag = f"--counts-layer {source[8:-2]}" if source.startswith("layers") else "(raw.X is used by default)"
            return f"{source} holds raw counts: pass {flag}."
    return (
        f"The model needs raw counts: pass --counts-layer with the layer that holds them (layers: "
        f"{', '.join(layers) or 'none'}), or keep raw counts in X or raw.X."
    )


@dataclass
class Cells:
    """Cells that carry no signal for the model, and duplicate barcodes: counted, never dropped silently."""

    n_cells: int
    empty: np.ndarray  # bool: zero counts over all genes
    no_overlap: np.ndarray  # bool: counts, but none in the model's genes
    n_duplicate_barcodes: int

    @property
    def no_signal(self) -> np.ndarray:
        return self.empty | self.no_overlap

    def warnings(self) -> list[str]:
        out = []
        if self.empty.any():
            out.append(
                f"{int(self.empty.sum())} of {self.n_cells} cells have zero counts: they are labelled Unassigned"
            )
        if self.no_overlap.any():
            out.append(
                f"{int(self.no_overlap.sum())} of {self.n_cells} cells have no counts in the model's genes: "
                "they are labelled Unassigned"
            )
        if self.n_duplicate_barcodes:
            out.append(
                f"{self.n_duplicate_barcodes} duplicate cell barcodes: made unique in the output by appending "
                "-1, -2, ... (anndata's obs_names_make_unique)"
            )
        return out


def check_cells(totals: np.ndarray, in_model: np.ndarray, obs_names) -> Cells:
    """Empty cells, cells without counts in the model's genes, duplicate barcodes; refuse if no cell is left.

    ``totals`` and ``in_model`` are each cell's counts over all genes and over the model's genes.
    """
    cells = Cells(
        n_cells=len(totals),
        empty=totals == 0,
        no_overlap=(in_model == 0) & (totals > 0),
        n_duplicate_barcodes=int(pd.Index(obs_names).duplicated().sum()),
    )
    if cells.no_signal.all():
        raise InputError(
            f"none of the {cells.n_cells} cells has counts in the model's genes ({int(cells.empty.sum())} have no "
            "counts at all): check that the matrix is cells x genes (--orientation) and holds the counts"
        )
    return cells


@dataclass
class GeneCheck:
    """The query's genes checked against a model: id type, species, alignment, and warnings to show."""

    id_type: str
    species: Species
    alignment: Alignment
    warnings: list[str] = field(default_factory=list)


@dataclass
class CheckedQuery:
    """A query's first cells and its names, checked before any model runs (:func:`check_query`)."""

    first: sp.csr_matrix  # the first cells' raw counts (the block annotate starts with)
    genes: GeneCheck

    @property
    def alignment(self) -> Alignment:
        return self.genes.alignment

    @cached_property
    def aligned(self) -> sp.csr_matrix:
        """The first cells' counts in the model's gene order."""
        return self.alignment.apply(self.first)

    def check_cells(self, obs_names) -> Cells:
        """:func:`check_cells` on the first cells (all of them, where ``first`` is the whole query)."""
        return check_cells(row_sums(self.first), row_sums(self.aligned), obs_names[: self.first.shape[0]])


def check_orientation(obs_names, var_names) -> None:
    """Refuse a matrix whose cell names are gene names and whose gene names are not: it is transposed."""
    cells, genes = known_gene_fraction(obs_names[:5000]), known_gene_fraction(var_names)
    if cells >= MIN_GENE_SHARE and cells > genes:
        raise InputError(
            f"the matrix looks transposed: {cells:.0%} of the cell names are gene names (e.g. "
            f"{', '.join(map(str, obs_names[:3]))}) but only {genes:.0%} of the gene names are. Pass --transpose, "
            "or --orientation genes-by-cells (genes in the first column) / cells-by-genes (genes in the header)"
        )


def check_species(species: Species, model_species: str, species_map: bool) -> None:
    """A query of another species than the model's is refused unless ``--species-map`` is given."""
    if species.name in ("unknown", model_species) or species_map:
        return
    raise InputError(
        f"the query's genes look {species.name} ({species.evidence}) but the model is for {model_species}: "
        f"use a {species.name} model, or pass --species-map to map genes to {model_species} orthologs by symbol "
        "(one-to-one orthologs that share a name only; see the README)"
    )


def check_genes(obs_names, var: pd.DataFrame, info, checks: CheckOptions) -> GeneCheck:
    """The checks on the query's names, before its matrix is read: orientation, gene ids, species, overlap.

    ``var`` describes the genes of the counts matrix; ``info`` is the model's :class:`runner.invoke.ModelInfo`.
    """
    names = var.index
    check_orientation(obs_names, names)
    species = detect_species(names)
    check_species(species, info.species, checks.species_map)
    query_species = species.name if checks.species_map and species.name != "unknown" else None
    alignment = align_genes(
        var,
        info.genes,
        model_id_type=info.gene_id_type,
        species=info.species,
        gene_column=checks.gene_column,
        query_species=query_species,
    )
    logger.info(
        "gene overlap: %d of %d model genes (%.1f%%) after mapping, %d before; names from %s",
        alignment.n_present,
        len(info.genes),
        100 * alignment.fraction,
        alignment.n_before,
        alignment.source,
    )
    check_overlap(alignment, info.gene_id_type, checks.min_gene_overlap, names, info.name)
    unknown = species.name == "unknown"
    warnings = [f"species not recognised from the gene names ({species.evidence})"] if unknown else []
    return GeneCheck(id_type(names), species, alignment, warnings)


def check_query(query, info, checks: CheckOptions, n_cells: int | None = None) -> CheckedQuery:
    """The checks of a query before any model runs, in order; the one sequence of ``annotate`` (a file, or an
    AnnData through the API) and ``cellzoo inspect``.

    1. counts: the first ``n_cells`` cells (all: ``None``) are raw counts (:func:`checked_counts`; rebuilt
       first where the query holds log1p-normalised values and library sizes: :class:`RebuiltCounts`);
    2. names: orientation, gene ids, species, overlap with the model (:func:`check_genes`).

    The cells (:func:`check_cells`) are checked once every block has been read. ``query`` is a source of
    counts (:class:`runner.sources.MemoryQuery` or :class:`runner.sources.StreamedFile`): ``rows``,
    ``source``, ``others``, ``obs_names``, ``var``. Raises :class:`InputError` (or ``UsageError``) at the
    first problem.
    """
    first = checked_counts(query.rows(0, n_cells or query.n_obs), query.source, query.others)
    return CheckedQuery(first, check_genes(query.obs_names, query.var, info, checks))
