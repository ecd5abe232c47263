"""Gene ids: detect symbols vs Ensembl ids, map between them, and align a query to a model's genes."""

from __future__ import annotations

import gzip
import logging
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from runner.errors import InputError, UsageError

logger = logging.getLogger(__name__)

ENSEMBL = "ensembl"
SYMBOL = "symbol"
ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
TABLES = Path(__file__).parent / "data"
SPECIES_TABLES = {"human": "genes_human.tsv.gz", "mouse": "genes_mouse.tsv.gz"}


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


@dataclass(frozen=True)
class Alignment:
    """How query genes map onto the model's genes."""

    matrix: sp.csr_matrix  # query genes x model genes, 0/1: counts @ matrix = counts in model order
    present: np.ndarray  # model genes found in the query (bool, model order)
    source: str  # where the query's gene names came from, and any translation
    n_duplicates: int  # query genes that were summed into a model gene another query gene also maps to

    @property
    def n_present(self) -> int:
        return int(self.present.sum())

    @property
    def fraction(self) -> float:
        return self.n_present / len(self.present)


def query_gene_names(var: pd.DataFrame, gene_column: str | None, model_id_type: str) -> tuple[pd.Index, str]:
    """The query's gene names in the model's id type: ``var_names``, a ``var`` column, or a translation."""
    if gene_column is not None:
        if gene_column not in var.columns:
            raise UsageError(
                f"--gene-column {gene_column!r} is not a column of var; columns: {', '.join(var.columns) or 'none'}"
            )
        return pd.Index(var[gene_column].astype(str)), f"var[{gene_column!r}]"
    names = pd.Index(var.index.astype(str))
    if id_type(names) == model_id_type:
        return names, "var_names"
    for column in var.columns:  # a var column holding the model's id type, as 10x and Bioconductor export
        if var[column].dtype == object or isinstance(var[column].dtype, pd.CategoricalDtype):
            values = pd.Index(var[column].astype(str))
            if id_type(values) == model_id_type and values.str.len().max() > 0:
                return values, f"var[{column!r}]"
    return names, "var_names"


def align_genes(
    var: pd.DataFrame,
    model_genes: np.ndarray,
    *,
    model_id_type: str,
    species: str,
    gene_column: str | None = None,
) -> Alignment:
    """Map the query's genes onto the model's, translating Ensembl ids <-> symbols when needed.

    Several query genes that map to one model gene (duplicate names, or ids that share a symbol) are
    summed, with a warning giving their number.
    """
    names, source = query_gene_names(var, gene_column, model_id_type)
    if id_type(names) != model_id_type and gene_column is None:
        translated = translate(names, model_id_type, species)
        before = int(np.isin(model_genes, names).sum())
        after = int(np.isin(model_genes, translated).sum())
        logger.info(
            "query genes are %s, the model's %s: %d model genes matched before mapping, %d after",
            id_type(names),
            model_id_type,
            before,
            after,
        )
        if after > before:
            names, source = translated, f"{source} mapped {id_type(names)} -> {model_id_type} (GENCODE table)"
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
    return Alignment(matrix=matrix, present=per_model_gene > 0, source=source, n_duplicates=n_duplicates)


def check_overlap(alignment: Alignment, model_id_type: str, min_fraction: float, example_names) -> None:
    """Refuse a query that shares too few genes with the model, and say what to try."""
    if alignment.fraction >= min_fraction and alignment.n_present > 0:
        return
    examples = ", ".join(map(str, list(example_names)[:3]))
    raise InputError(
        f"only {alignment.n_present} of the model's {len(alignment.present)} genes "
        f"({alignment.fraction:.1%}) are in the query (genes from {alignment.source}, e.g. {examples}); "
        f"at least {min_fraction:.0%} are needed. The model uses gene {model_id_type}s: pass --gene-column "
        "with the var column that holds them, check the species, or lower --min-gene-overlap at your own risk."
    )
