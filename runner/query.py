"""The checks on a query before any model runs: its raw counts, its genes and species, its cells."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

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

logger = logging.getLogger(__name__)

COUNT_CHECK_VALUES = 2_000_000  # values inspected for integrality (the first ones; enough to catch log data)
INTEGER_TOLERANCE = 1e-6  # values this close to an integer are counts written as floats (e.g. 0.999999999)
LOG_MAX = 30.0  # non-integer data whose maximum is below this looks log-transformed
MIN_GENE_SHARE = 0.2  # names of which this share are known genes are gene names
TOTALS_SPREAD = 1e-3  # non-integer data whose cell totals vary less than this (relative) looks normalised
NUMERIC_KINDS = "biuf"  # numpy kinds of values that may be counts: bool, signed and unsigned integers, floats


@dataclass(frozen=True)
class Counts:
    matrix: sp.csr_matrix  # cells x genes, raw counts
    var: pd.DataFrame  # the genes of ``matrix``
    source: str  # "layers['counts']", "raw.X" or "X"


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


def _fractional(values: np.ndarray) -> np.ndarray:
    """The values (among the first ``COUNT_CHECK_VALUES``) farther than ``INTEGER_TOLERANCE`` from an integer."""
    sample = values[:COUNT_CHECK_VALUES]
    return sample[np.abs(sample - np.round(sample)) > INTEGER_TOLERANCE]


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
    if matrix.nnz and not np.array_equal(matrix.data, np.round(matrix.data)):
        matrix = matrix.copy()
        matrix.data = np.round(matrix.data)
    return matrix


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


def find_counts(adata, layer: str | None = None) -> Counts:
    """The raw counts of an in-memory AnnData (:func:`counts_matrix`), checked by :func:`checked_counts`."""
    source, x, var = counts_matrix(adata, layer)
    matrix = checked_counts(as_csr(x), source, lambda: candidate_matrices(adata))
    logger.info("counts from %s: %d cells x %d genes", source, *matrix.shape)
    return Counts(matrix, var, source)


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
    """An in-memory query that passed every check: counts, genes, cells, and the warnings to show."""

    counts: Counts
    genes: GeneCheck
    aligned: sp.csr_matrix  # cells x model genes, raw counts in the model's gene order
    cells: Cells
    warnings: list[str] = field(default_factory=list)

    @property
    def alignment(self) -> Alignment:
        return self.genes.alignment


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


def check_genes(
    obs_names,
    var: pd.DataFrame,
    info,
    *,
    gene_column: str | None = None,
    species_map: bool = False,
    min_gene_overlap: float = 0.2,
) -> GeneCheck:
    """The checks on the query's names, before its matrix is read: orientation, gene ids, species, overlap.

    ``var`` describes the genes of the counts matrix; ``info`` is the model's :class:`runner.invoke.ModelInfo`.
    """
    names = var.index
    check_orientation(obs_names, names)
    species = detect_species(names)
    check_species(species, info.species, species_map)
    query_species = species.name if species_map and species.name != "unknown" else None
    alignment = align_genes(
        var,
        info.genes,
        model_id_type=info.gene_id_type,
        species=info.species,
        gene_column=gene_column,
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
    check_overlap(alignment, info.gene_id_type, min_gene_overlap, names)
    unknown = species.name == "unknown"
    warnings = [f"species not recognised from the gene names ({species.evidence})"] if unknown else []
    return GeneCheck(id_type(names), species, alignment, warnings)


def check_query(
    adata,
    info,
    *,
    counts_layer: str | None = None,
    gene_column: str | None = None,
    species_map: bool = False,
    min_gene_overlap: float = 0.2,
) -> CheckedQuery:
    """Every check of an in-memory query, in order: counts, gene ids and species, overlap, cells.

    Raises :class:`InputError` (or ``UsageError``) at the first problem; what is only worth a
    warning is logged and returned. ``annotate`` runs the same checks chunk by chunk (:mod:`runner.annotate`).
    """
    counts = find_counts(adata, counts_layer)
    genes = check_genes(
        adata.obs_names,
        counts.var,
        info,
        gene_column=gene_column,
        species_map=species_map,
        min_gene_overlap=min_gene_overlap,
    )
    aligned = genes.alignment.apply(counts.matrix)
    cells = check_cells(row_sums(counts.matrix), row_sums(aligned), adata.obs_names)
    warnings = cells.warnings() + genes.warnings
    for line in warnings:
        logger.warning(line)
    return CheckedQuery(counts, genes, aligned, cells, warnings)
