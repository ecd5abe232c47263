"""Gene ids: detect symbols vs Ensembl ids, map between them, and align a query to a model's genes."""

from __future__ import annotations

import gzip
import logging
import re
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from runner.errors import InputError, UsageError

logger = logging.getLogger(__name__)

ENSEMBL = "ensembl"
SYMBOL = "symbol"
ID_TYPE_NAMES = {ENSEMBL: "Ensembl gene ids", SYMBOL: "gene symbols"}  # for messages
ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
TABLES = Path(__file__).parent / "data"
HUMAN = "human"
MOUSE = "mouse"
SPECIES_TABLES = {HUMAN: "genes_human.tsv.gz", MOUSE: "genes_mouse.tsv.gz"}


def id_type(names) -> str:
    """``ensembl`` when most names look like Ensembl gene ids (ENSG..., ENSMUSG..., version optional)."""
    names = pd.Index(names).astype(str)
    sample = names[:: max(1, len(names) // 2000)]
    share = float(np.mean([bool(ENSEMBL_ID.match(n)) for n in sample])) if len(sample) else 0.0
    return ENSEMBL if share > 0.5 else SYMBOL


@cache
def _table(species: str) -> pd.DataFrame:
    with gzip.open(TABLES / SPECIES_TABLES[species], "rt") as fh:
        return pd.read_csv(fh, sep="\t", dtype=str)


def translate(names: pd.Index, to: str, species: str) -> pd.Index:
    """Ensembl ids -> symbols or symbols -> Ensembl ids with the shipped GENCODE table ('' when unknown).

    Version suffixes of Ensembl ids are ignored. A symbol with several ids maps to the first listed.
    """
    if species not in SPECIES_TABLES:
        raise InputError(f"no gene id table for species {species!r}; tables exist for {', '.join(SPECIES_TABLES)}")
    table = _table(species)
    if to == SYMBOL:
        lookup = dict(zip(table["ensembl_id"], table["symbol"], strict=True))
        keys = [n.split(".")[0] for n in names.astype(str)]
    else:
        lookup = dict(zip(table["symbol"][::-1], table["ensembl_id"][::-1], strict=True))
        keys = list(names.astype(str))
    return pd.Index([lookup.get(k, "") for k in keys])


@cache
def _symbols(species: str) -> frozenset[str]:
    return frozenset(_table(species)["symbol"].dropna())


@cache
def _upper_symbols(species: str) -> dict[str, str]:
    """Upper-cased symbol -> the species' own spelling (first listed)."""
    symbols = _table(species)["symbol"].dropna()
    return dict(zip(symbols.str.upper()[::-1], symbols[::-1], strict=True))


def known_gene_fraction(names) -> float:
    """The share of ``names`` that are human or mouse gene symbols or Ensembl ids (case ignored).

    Used to tell which side of a text table holds the genes.
    """
    names = pd.Index(names).astype(str)
    sample = names[:: max(1, len(names) // 2000)]
    if not len(sample):
        return 0.0
    upper = set(_upper_symbols(HUMAN)) | set(_upper_symbols(MOUSE))
    hits = [bool(ENSEMBL_ID.match(n)) or n.upper() in upper for n in sample]
    return float(np.mean(hits))


@dataclass(frozen=True)
class Species:
    """The species a query's gene names come from, and why we think so."""

    name: str  # "human", "mouse" or "unknown"
    evidence: str


def detect_species(names) -> Species:
    """Human or mouse from gene names: the Ensembl prefix (ENSG / ENSMUSG), else the GENCODE symbol tables.

    Symbols are matched as written first (human CD3E vs mouse Cd3e); names that are all upper case
    are then compared case-insensitively on the symbols only one species has (e.g. mouse Gm and Rik
    genes), which recognises upper-cased mouse symbols.
    """
    names = pd.Index(names).astype(str)
    if id_type(names) == ENSEMBL:
        human = int(names.str.startswith("ENSG").sum())
        mouse = int(names.str.startswith("ENSMUSG").sum())
        if human == mouse == 0:
            return Species("unknown", "Ensembl ids of neither ENSG (human) nor ENSMUSG (mouse)")
        species = HUMAN if human >= mouse else MOUSE
        return Species(species, f"{human} ENSG (human) and {mouse} ENSMUSG (mouse) ids")
    present = set(names)
    human, mouse = len(present & _symbols(HUMAN)), len(present & _symbols(MOUSE))
    if mouse > human:
        return Species(MOUSE, f"{mouse} mouse and {human} human symbols as written")
    upper = {n.upper() for n in present}
    human_only = len(upper & (set(_upper_symbols(HUMAN)) - set(_upper_symbols(MOUSE))))
    mouse_only = len(upper & (set(_upper_symbols(MOUSE)) - set(_upper_symbols(HUMAN))))
    if mouse_only > human_only:
        return Species(MOUSE, f"upper-cased mouse symbols: {mouse_only} mouse-only vs {human_only} human-only names")
    if human == 0:
        return Species("unknown", "no name is a human or mouse gene symbol or Ensembl id")
    return Species(HUMAN, f"{human} human and {mouse} mouse symbols as written")


def ortholog_symbols(names: pd.Index, source: str, target: str) -> pd.Index:
    """``--species-map``: gene names of ``source`` species -> symbols of ``target`` by symbol spelling.

    Ensembl ids are first translated to ``source`` symbols. A symbol maps to the ``target`` symbol
    spelled the same up to case (mouse Cd3e <-> human CD3E); '' when ``target`` has no such symbol.
    This finds the one-to-one orthologs that share a name (most protein-coding genes); it misses
    orthologs with different names and cannot resolve one-to-many orthology.
    """
    if {source, target} - set(SPECIES_TABLES):
        raise UsageError(f"--species-map maps between {' and '.join(SPECIES_TABLES)} only, not {source} -> {target}")
    names = pd.Index(names).astype(str)
    if id_type(names) == ENSEMBL:
        names = translate(names, SYMBOL, source)
    lookup = _upper_symbols(target)
    return pd.Index([lookup.get(n.upper(), "") if n else "" for n in names])


@dataclass(frozen=True)
class Alignment:
    """How query genes map onto the model's genes."""

    matrix: sp.csr_matrix  # query genes x model genes, 0/1: counts @ matrix = counts in model order
    present: np.ndarray  # model genes found in the query (bool, model order)
    source: str  # where the query's gene names came from, and any translation
    n_duplicates: int  # query genes that were summed into a model gene another query gene also maps to
    n_before: int = 0  # model genes matched by the query's names as given, before any mapping
    names: pd.Index | None = None  # each query gene's name in the model's id type ('' when unknown)

    def matching(self, pattern: str) -> np.ndarray:
        """1.0 for each query gene whose name (as a symbol: Ensembl ids are looked up) matches ``pattern``, else 0.0
        (``counts @ matching`` is each cell's count in those genes)."""
        names = self.names if self.names is not None else pd.Index([])
        if id_type(names) == ENSEMBL:
            species = detect_species(names).name
            names = translate(names, SYMBOL, species if species in SPECIES_TABLES else HUMAN)
        return np.asarray(names.astype(str).str.contains(pattern, regex=True), dtype=np.float64)

    @property
    def n_present(self) -> int:
        return int(self.present.sum())

    @property
    def fraction(self) -> float:
        return self.n_present / len(self.present)

    @cached_property
    def _model_column(self) -> np.ndarray:
        """For each query gene, the model gene it is (-1: none); only when no two query genes share one."""
        query_gene, model_gene = self.matrix.nonzero()
        column = np.full(self.matrix.shape[0], -1, dtype=np.int32)
        column[query_gene] = model_gene
        return column

    def apply(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        """``counts`` (cells x query genes) as cells x model genes: ``counts @ matrix``, computed as a column
        selection (several times faster) unless query genes share a model gene and are summed. Always new
        arrays: a streamed query's reader reuses the buffers of ``counts`` (:class:`runner.sources.CsrRows`).

        The selection looks each stored value's gene up in :attr:`_model_column` and keeps those of model
        genes, in the order stored (a row's genes need not be sorted): 39 ms per 10,000 cells x 33,694
        genes, against 52 ms for scipy's column indexing (docs/design.md)."""
        if self.n_duplicates:
            return sp.csr_matrix(counts @ self.matrix)
        counts = sp.csr_matrix(counts)
        column = self._model_column[counts.indices]
        kept = np.flatnonzero(column >= 0)
        indptr = np.searchsorted(kept, counts.indptr)  # kept values before each row's first
        return sp.csr_matrix(
            (counts.data[kept].astype(np.float32, copy=False), column[kept], indptr),  # indexing made them new
            shape=(counts.shape[0], self.matrix.shape[1]),
        )


VAR_NAMES = "var_names"  # --gene-column var_names: the names themselves, whatever the columns hold
UNIQUIFIED = re.compile(r"^(?P<symbol>.+)_ENS[A-Z]*G\d{6,}(\.\d+)?$")  # SYMBOL_ENSG...: scater's unique names


def gene_name_candidates(var: pd.DataFrame, gene_column: str | None) -> list[tuple[pd.Index, str]]:
    """Where the query's gene names may be: ``var[gene_column]`` (or ``var_names``) as given, else ``var_names``
    and every text column of ``var`` (10x, Bioconductor and CELLxGENE files keep symbols or Ensembl ids there),
    and last each of those whose duplicate symbols were made unique with their Ensembl id (``PDE4DIP_ENSG00000178104``,
    as scater's ``uniquifyFeatureNames`` writes them) with that suffix taken off."""
    if gene_column == VAR_NAMES and VAR_NAMES not in var.columns:
        return [(pd.Index(var.index.astype(str)), VAR_NAMES)]
    if gene_column is not None:
        if gene_column not in var.columns:
            raise UsageError(
                f"--gene-column {gene_column!r} is not a column of var ({VAR_NAMES} for the names themselves); "
                f"columns: {', '.join(var.columns) or 'none'}"
            )
        return [(pd.Index(var[gene_column].astype(str)), f"var[{gene_column!r}]")]
    found = [(pd.Index(var.index.astype(str)), VAR_NAMES)]
    for column in var.columns:
        dtype = var[column].dtype
        if pd.api.types.is_string_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
            found.append((pd.Index(var[column].astype(str)), f"var[{column!r}]"))
    stripped = []
    for names, source in found:
        symbols = names.str.replace(UNIQUIFIED, lambda m: m["symbol"], regex=True)
        if (symbols != names).any():
            stripped.append((symbols, f"{source} without the _ENSG... suffix of {int((symbols != names).sum())}"))
    return found + stripped


@dataclass(frozen=True)
class GeneNames:
    """One candidate for the query's gene names, in the model's id type and species where they could be mapped."""

    names: pd.Index
    source: str  # where they came from, and any mapping
    n_before: int  # model genes matched as given
    n_present: int  # model genes matched after mapping


def _mapped_names(
    names: pd.Index,
    source: str,
    model_genes: np.ndarray,
    *,
    model_id_type: str,
    species: str,
    query_species: str | None,
) -> GeneNames:
    """``names`` mapped to the model's species (``--species-map``) and id type (GENCODE table) where that
    matches more model genes."""
    n_before = n_found(model_genes, names)
    if query_species is not None and query_species != species:
        names = ortholog_symbols(names, query_species, species)
        source = f"{source} mapped {query_species} -> {species} by symbol (--species-map)"
    if id_type(names) != model_id_type:
        translated = translate(names, model_id_type, species)
        before, after = n_found(model_genes, names), n_found(model_genes, translated)
        if after > before:
            names, source = translated, f"{source} mapped {id_type(names)} -> {model_id_type} (GENCODE table)"
    return GeneNames(names, source, n_before, n_found(model_genes, names))


def n_found(model_genes: np.ndarray, names) -> int:
    """How many of the model's genes are among ``names`` (a hash lookup: numpy's isin sorts strings, 0.3 s
    for a whole-genome panel)."""
    return int(pd.Index(model_genes).isin(names).sum())


def align_genes(
    var: pd.DataFrame,
    model_genes: np.ndarray,
    *,
    model_id_type: str,
    species: str,
    gene_column: str | None = None,
    query_species: str | None = None,
) -> Alignment:
    """Map the query's genes onto the model's, translating Ensembl ids <-> symbols when needed.

    The names are taken from ``var[gene_column]``, else from whichever of ``var_names`` and the text columns
    of ``var`` matches the most model genes (after mapping; ``var_names`` when several match as many). With
    ``query_species`` other than the model's ``species`` (``--species-map``), names are first mapped to the
    model's species by :func:`ortholog_symbols`. Several query genes that map to one model gene (duplicate
    names, or ids that share a symbol) are summed, with a warning giving their number.
    """
    tried = [
        _mapped_names(
            names, source, model_genes, model_id_type=model_id_type, species=species, query_species=query_species
        )
        for names, source in gene_name_candidates(var, gene_column)
    ]
    chosen = max(tried, key=lambda c: (c.n_present, c.n_before))  # the first of equals: var_names before columns
    if len(tried) > 1:
        logger.info(
            "gene names from %s (%d model genes); tried %s",
            chosen.source,
            chosen.n_present,
            ", ".join(f"{c.source}: {c.n_present}" for c in tried if c is not chosen),
        )
    names, source, n_before = chosen.names, chosen.source, chosen.n_before
    position = pd.Index(model_genes).get_indexer(names)
    hit = np.flatnonzero(position >= 0)
    matrix = sp.csr_matrix(
        (np.ones(len(hit), dtype=np.float32), (hit, position[hit])), shape=(len(names), len(model_genes))
    )
    per_model_gene = np.bincount(position[hit], minlength=len(model_genes))
    n_duplicates = int((per_model_gene[per_model_gene > 1] - 1).sum())
    if n_duplicates:
        examples = [model_genes[i] for i in np.flatnonzero(per_model_gene > 1)[:5]]
        logger.warning(
            "%d query genes share a name with another query gene used by the model (e.g. %s); their counts were summed",
            n_duplicates,
            ", ".join(examples),
        )
    return Alignment(
        matrix=matrix,
        present=per_model_gene > 0,
        source=source,
        n_duplicates=n_duplicates,
        n_before=n_before,
        names=pd.Index(names).astype(str),
    )


PANEL_HINT_FRACTION = 0.25  # below this share of the model's genes, annotate suggests a panel-exact model


def panel_hint(model_name: str) -> str:
    return (
        f"for a targeted panel (MERFISH, Xenium, CosMx) train a model on exactly the query's genes: "
        f"cellzoo build {model_name} --reference REFERENCE.h5ad --genes-from QUERY"
    )


def check_overlap(
    alignment: Alignment, model_id_type: str, min_fraction: float, example_names, model_name: str = "RECIPE"
) -> None:
    """Refuse a query that shares too few genes with the model, and say what to try; warn, with the
    panel-exact build to try, when it shares fewer than ``PANEL_HINT_FRACTION`` of them."""
    if alignment.fraction >= min_fraction and alignment.n_present > 0:
        if alignment.fraction < PANEL_HINT_FRACTION:
            logger.warning(
                "only %d of the model's %d genes (%.1f%%) are in the query: the answers rest on few genes; %s",
                alignment.n_present,
                len(alignment.present),
                100 * alignment.fraction,
                panel_hint(model_name),
            )
        return
    examples = ", ".join(map(str, list(example_names)[:3]))
    raise InputError(
        f"only {alignment.n_present} of the model's {len(alignment.present)} genes "
        f"({alignment.fraction:.1%}) are in the query (genes from {alignment.source}, e.g. {examples}); "
        f"at least {min_fraction:.0%} are needed. The model uses {ID_TYPE_NAMES.get(model_id_type, model_id_type)}: "
        "pass --gene-column with the var column that holds them, check the species, or lower "
        "--min-gene-overlap at your own risk; " + panel_hint(model_name)
    )
