"""Novelty limits: what a class missing from the reference carries, and what can find it without its label.

    python benchmarks/novelty_limits.py [--data ../shared/data] [--docs-dir docs/benchmarks]

Issue 15 sets a goal for a class the reference lacks within its own tissue: novelty AUROC >= 0.95. The novelty
benchmark (novelty.md) meets it in 1 of 19 cases with cellzoo `linear`, CellTypist in none, scArches in 1 of the
3 it is run on. This part asks
why, on the same cases (every PBMC class on Kang 2018 and OneK1K, every lung class with >= 10 cells on
Travaglini 2020), with three measures:

1. **With the class**: the `linear` family built on every class (the benchmark's `pbmc` recipe; the `lung`
   recipe on Tabula Sapiens alone), annotated through the runner; the AUROC of the probability of the class for
   its cells against the query's other cells. A model that was shown the class: the separation the cells
   carry in this family's genes, a ceiling for a detector that was not.
2. **Genes the closest class does not use**: the share of a cell's counts in genes on which the reference class
   that best explains the cell (multinomial likelihood of its counts) spends < ``UNUSED_SHARE`` of its counts,
   over every gene the reference and the query share but the technical ones (``model_zoo.novelty.TECHNICAL``).
   Flagged above the value that 0.5% of the reference's own cells exceed. From the reference's counts alone,
   no model.
3. **Clusters of the query**: k-means (``CLUSTERS``) on the query's own PCA (its highly variable genes), and per
   cluster 1 - the highest correlation of its log pseudo-bulk with a reference class's, over those genes. Needs
   the whole query at once (the runner streams), as CellTypist's majority voting does.

Measures 2 and 3 drop the class's cells from the reference in memory (the recipe's training cells less the
class's; novelty.md harmonises the lung file again without them). Kang 2018 is also split into its two halves
(`group_id`: control, IFN-beta stimulated), each clustered on its own.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

if not __package__:  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import accuracy, lung
from benchmarks.accuracy import PBMC, QueryData, Reference, load_query, load_reference, reference_from_recipe
from benchmarks.novelty import MIN_QUERY_CELLS, auroc, held_cells
from benchmarks.report import markdown_table, publish
from model_zoo.novelty import QUANTILE, TECHNICAL

UNUSED_SHARE = 3e-5  # a gene the class spends less than this share of its counts on is "unused" by it
CLUSTERS = 20  # k-means clusters of each query
HVG, PCS, SEED = 2000, 30, 0


@dataclass(frozen=True)
class View:
    """Cells of a query, as one row group of the tables: the whole query or a part of it (``mask``)."""

    name: str
    query: QueryData
    mask: np.ndarray

    @property
    def truth(self) -> np.ndarray:
        return self.query.truth[self.mask]

    @functools.cached_property
    def counts(self) -> sp.csr_matrix:  # read by every measure of every held-out class: made once
        return sp.csr_matrix(self.query.counts.X, dtype=np.float64)[self.mask]

    @property
    def genes(self) -> np.ndarray:
        return np.asarray(self.query.counts.var_names)


def views_of(query: QueryData, data: Path) -> list[View]:
    """The whole query, and for Kang 2018 its control and stimulated halves."""
    views = [View(query.query.name, query, np.ones(len(query.truth), dtype=bool))]
    groups = ad.read_h5ad(data / query.query.file, backed="r").obs
    if "group_id" in groups:
        group = groups["group_id"].astype(str).to_numpy()
        views += [View(f"{query.query.name}, {g} only", query, group == g) for g in sorted(set(group))]
    return views


# ---- 1. with the class ----


def class_probabilities(reference: Reference, queries: list[QueryData], work: Path) -> dict[str, tuple]:
    """The `linear` family built on every class of ``reference``: per query, (probabilities, class names)."""
    model = accuracy.build_model(accuracy.cellzoo_recipe(reference, "linear"), reference.paths, work)
    out = {}
    for query in queries:
        result = accuracy.annotated_by_cellzoo(query.path, model, work)
        key = accuracy.KEY
        out[query.query.name] = (np.asarray(result.obsm[f"{key}_probabilities"]), list(result.uns[key]["classes"]))
    return out


# ---- 2. genes the closest class does not use ----


def reference_counts(reference: Reference, genes: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """The reference's counts on ``genes`` but the technical ones and those it lacks; which of ``genes`` those are."""
    index = {g: i for i, g in enumerate(reference.cells.genes)}
    used = np.array([g in index and not re.match(TECHNICAL, g) for g in genes])
    return reference.cells.counts.tocsr()[:, [index[g] for g in genes[used]]].astype(np.float64), used


def class_profiles(reference: Reference, counts: sp.csr_matrix, drop: str | None) -> np.ndarray:
    """Each reference class's share of its ``counts`` (:func:`reference_counts`) per gene, classes but ``drop``."""
    labels = np.asarray(reference.cells.labels)
    sums = np.vstack([np.asarray(counts[labels == c].sum(axis=0)).ravel() for c in sorted(set(labels) - {drop})])
    return sums / sums.sum(axis=1, keepdims=True)


def unused_gene_share(counts: sp.csr_matrix, shares: np.ndarray) -> np.ndarray:
    """Per cell, the share of its counts in genes its most likely class (multinomial) barely uses."""
    total = np.maximum(np.asarray(counts.sum(axis=1)).ravel(), 1)
    best = np.asarray(counts @ np.log(np.maximum(shares, 1e-6)).T).argmax(axis=1)
    unused = np.asarray(counts @ (shares < UNUSED_SHARE).T.astype(np.float64))
    return unused[np.arange(len(best)), best] / total


def unused_genes(reference: Reference, view: View, drop: str | None) -> tuple[np.ndarray, float]:
    """The view's cells' unused-gene share against ``reference`` without ``drop``, and the flag threshold: the
    value that 1 - QUANTILE of the reference's own cells (but ``drop``'s) exceed."""
    counts, used = reference_counts(reference, view.genes)
    shares = class_profiles(reference, counts, drop)
    own = counts[np.asarray(reference.cells.labels) != drop]
    return unused_gene_share(view.counts[:, used], shares), float(np.quantile(unused_gene_share(own, shares), QUANTILE))


# ---- 3. clusters of the query ----


def query_clusters(view: View) -> tuple[np.ndarray, np.ndarray]:
    """k-means clusters of the view's cells on their own PCA (log1p CP10k, highly variable genes, scaled), and
    the highly variable genes."""
    import scanpy as sc
    from sklearn.cluster import KMeans

    adata = ad.AnnData(view.counts.astype(np.float32), var={"gene": view.genes})
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=min(HVG, adata.n_vars // 2))
    variable = adata.var["highly_variable"].to_numpy()
    top = adata[:, variable].copy()
    sc.pp.scale(top, max_value=10)
    sc.tl.pca(top, n_comps=PCS, random_state=SEED)
    return KMeans(n_clusters=CLUSTERS, n_init=3, random_state=SEED).fit_predict(top.obsm["X_pca"]), variable


def log_pseudobulk(counts) -> np.ndarray:
    total = np.asarray(counts.sum(axis=0)).ravel()
    return np.log1p(total / max(total.sum(), 1) * 1e4)


def cluster_mismatch(reference: Reference, view: View, clusters, variable, drop: str | None) -> np.ndarray:
    """Per cell, 1 - the highest correlation of its cluster's log pseudo-bulk with a class's (but ``drop``)."""
    reference_on_genes, used = reference_counts(reference, view.genes[variable])
    shares = class_profiles(reference, reference_on_genes, drop)
    counts = view.counts[:, variable][:, used]
    bulks = np.vstack([log_pseudobulk(counts[clusters == k]) for k in range(clusters.max() + 1)])
    classes = np.log1p(shares * 1e4)
    corr = np.corrcoef(np.vstack([bulks, classes]))[: len(bulks), len(bulks) :]
    return 1.0 - corr.max(axis=1)[clusters]


# ---- the tables ----


def measure(task: str, reference: Reference, queries: list[QueryData], data: Path, work: Path) -> tuple[list, list]:
    """The rows of one task: per held-out class and view, and per view with every class (in distribution)."""
    work.mkdir(parents=True, exist_ok=True)
    probabilities = class_probabilities(reference, queries, work)
    rows, baselines = [], []
    for query in queries:
        probs, names = probabilities[query.query.name]
        for view in views_of(query, data):
            clusters, variable = query_clusters(view)
            share, threshold = unused_genes(reference, view, None)
            mismatch = cluster_mismatch(reference, view, clusters, variable, None)
            baselines.append([task, view.name, int(view.mask.sum()), f"{(share > threshold).mean():.1%}"])
            baselines[-1] += [f"{np.median(mismatch):.2f}", f"{np.quantile(mismatch, 0.95):.2f}"]
            for held, term in reference.terms.items():
                positive = held_cells(view.truth, term)
                if positive.sum() < MIN_QUERY_CELLS or held not in names:
                    continue
                share, threshold = unused_genes(reference, view, held)
                flagged = share > threshold
                mismatch = cluster_mismatch(reference, view, clusters, variable, held)
                with_class = auroc(positive, probs[view.mask, names.index(held)])
                row = [task, view.name, held, int(positive.sum()), fmt(with_class), fmt(auroc(positive, share))]
                row += [f"{flagged[positive].mean():.1%}", f"{flagged[~positive].mean():.1%}"]
                rows.append([*row, fmt(auroc(positive, mismatch)), f"{np.median(mismatch[positive]):.2f}"])
            print(markdown_table(HEADER, [r for r in rows if r[1] == view.name]), flush=True)
    return rows, baselines


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


HEADER = ["task", "query", "held out", "cells", "with the class: AUROC"]
HEADER += ["unused genes: AUROC", "held-out flagged", "others flagged", "query clusters: AUROC", "held-out median"]
BASELINE_HEADER = ["task", "query", "cells", "unused genes: flagged", "query clusters: median", "95% quantile"]


def reached(rows: list[list], column: int) -> str:
    values = [float(r[column]) for r in rows if r[column] != "n/a" and ", " not in r[1]]
    return f"{sum(v >= 0.95 for v in values)} of {len(values)}"


def report(rows, baselines, command, env, seconds) -> str:
    doc = __doc__.split("\n\n", 2)[2].strip()
    return f"""## Novelty limits: what a class missing from the reference carries

Generated by `{command}` on {dt.date.today().isoformat()} in {seconds / 60:.1f} min (git {env["commit"]}).
Machine: {env["machine"]}. Versions: {env["versions"]}.

{doc}

Cases with AUROC >= 0.95 over the whole queries (the halves of Kang 2018 left out): with the class
{reached(rows, 4)}; unused genes {reached(rows, 5)}; query clusters {reached(rows, 8)}. cellzoo's novelty flag on
the same cases: the leave-one-class-out tables of novelty.md.

### Every class held out in turn
**held-out flagged / others flagged**: the unused-gene share above its threshold (0.5% of the reference's own
cells exceed it). **held-out median**: the query-cluster mismatch of the held-out cells (compare with the
in-distribution table below).

{markdown_table(HEADER, rows)}

### In distribution: every class in the reference
The same measures with nothing held out: what a threshold on them would cost the query's known types.

{markdown_table(BASELINE_HEADER, baselines)}

### Reproduce
    {command}
"""


def main(argv: list[str] | None = None) -> str:
    doc = __doc__.splitlines()[0]
    args, command = accuracy.part_arguments("novelty_limits.py", doc, "novelty_limits.md", "the PBMC task only", argv)
    start, env = time.perf_counter(), accuracy.environment()
    env["machine"] += f"; load average {os.getloadavg()[0]:.1f} at the start"
    rows, baselines = [], []
    with tempfile.TemporaryDirectory(prefix="cellzoo-novelty-limits-") as tmp:
        pbmc = load_reference(PBMC, args.data)
        tasks = [("PBMC", pbmc, [load_query(q, args.data, pbmc) for q in PBMC.queries])]
        if not args.quick:
            ts_task = accuracy.Task("lung, trained on Tabula Sapiens lung", (lung.TS.file,), {}, "", ())
            ts = reference_from_recipe(ts_task, lung.lung_recipe("lung-ts"), [args.data / lung.TS.file])
            tasks.append(("lung", ts, [load_query(lung.TRAVAGLINI, args.data, ts)]))
        for i, (task, reference, queries) in enumerate(tasks):
            more_rows, more_baselines = measure(task, reference, queries, args.data, Path(tmp) / str(i))
            rows += more_rows
            baselines += more_baselines
    text = report(rows, baselines, command, env, time.perf_counter() - start)
    return publish(args.docs_dir, "novelty_limits.md", text)


if __name__ == "__main__":
    main()
