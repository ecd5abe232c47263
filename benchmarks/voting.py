"""Majority voting: accuracy on real queries, time and memory at scale, cellzoo against CellTypist.

    python benchmarks/voting.py [--sizes 100000,1000000] [--quick]

1. **Accuracy** (real cells): the `pbmc` recipe (cellzoo linear, `annotate --majority-voting`: k-means
   over-clusters in the model's embedding, :mod:`runner.voting`) and CellTypist 1.7.1 (its default solver, in
   its own environment, ``majority_voting=True`` over its own Leiden over-clustering), both trained on the
   SoupX PBMC reference. Kang 2018 and OneK1K: ontology-level accuracy (``Unassigned`` wrong) and macro-F1,
   per cell and voted. Tabula Sapiens lung through the same models: the share of its non-immune cells (no
   lineage a blood model knows) and of its immune cells left ``Unassigned``, per cell and voted.
2. **Scale** (SYNTHETIC queries, `benchmarks/synthetic.py`): wall time and peak memory of each tool with
   and without voting, each run a fresh process measured as `benchmarks/scale.py` measures (one run per
   tool and size; the same memory guard).

Prints the tables and writes ``docs/benchmarks/voting.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad

if not __package__:  # run as a script (python benchmarks/voting.py): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import accuracy, lung, peers, scale
from benchmarks.report import markdown_table, publish
from benchmarks.synthetic import add_size_options, cached_synthetic
from runner.keys import UNASSIGNED, ResultKeys

SIZES = (100_000, 1_000_000)
QUICK_SIZES = (2_000,)
CELLZOO, CELLZOO_VOTING = "cellzoo linear", "cellzoo linear + majority voting"
CELLTYPIST, CELLTYPIST_VOTING = "CellTypist", "CellTypist + majority voting"


# ---- accuracy on real cells ----


def cellzoo_rows(result: ad.AnnData) -> dict[str, accuracy.Predictions]:
    """The per-cell answer and the vote of one `annotate --majority-voting` run, as rows of the tables."""
    keys = ResultKeys(accuracy.KEY)
    per_cell = accuracy.cellzoo_predictions(result)
    voted = result.obs[keys.majority_voting].astype(str).to_numpy()
    voted_terms = result.obs[keys.majority_voting_ontology_term_id].astype(str).to_numpy()
    vote = dataclasses.replace(per_cell, label=voted, top_label=voted, terms=voted_terms, top_terms=voted_terms)
    return {CELLZOO: per_cell, CELLZOO_VOTING: dataclasses.replace(vote, uncertainty=None, kind=None)}


def accuracy_rows(data: Path, work: Path) -> tuple[list[list[str]], list[list[str]], dict]:
    """The accuracy table (PBMC queries) and the cross-tissue table (Tabula Sapiens lung), and the clusters."""
    reference = accuracy.load_reference(accuracy.PBMC, data)
    model_dir = accuracy.build_model(accuracy.cellzoo_recipe(reference, "linear"), reference.paths, work)
    celltypist = accuracy.train_celltypist(reference, work, majority_voting=True)
    ts = lung.TS
    queries = [*accuracy.PBMC.queries, ts]
    table, foreign, clusters = [], [], {}
    for query in queries:
        data_query = accuracy.load_query(query, data, reference)
        result = accuracy.annotated_by_cellzoo(data_query.path, model_dir, work, majority_voting=True)
        clusters[query.name] = (result.n_obs, result.uns[accuracy.KEY]["majority_voting"]["clusters"])
        rows = cellzoo_rows(result) | celltypist(data_query, work)
        if query is ts:
            immune = ad.read_h5ad(data / ts.file, backed="r").obs["compartment"].astype(str).to_numpy() == "immune"
            for method, predictions in rows.items():
                unassigned = predictions.label == UNASSIGNED
                foreign.append([method, f"{unassigned[~immune].mean():.3f}", f"{unassigned[immune].mean():.3f}"])
            continue
        for method, predictions in rows.items():
            scores = accuracy.score(predictions, data_query.truth, reference.terms)
            table.append([query.name, method, f"{scores['accuracy']:.3f}", f"{scores['macro_f1']:.3f}"])
    return table, foreign, clusters


# ---- time and memory at scale ----


def scale_rows(sizes: list[int], data_dir: Path, mem_limit_gb: float) -> list[list[str]]:
    scale.pull_pbmc()
    model = scale.celltypist_model(data_dir, mem_limit_gb)

    def cellzoo(*extra: str):
        return lambda path, out: scale.cli("annotate", path, "-m", "pbmc", "-o", out, "--overwrite", "--backed", *extra)

    tools = {
        CELLZOO: cellzoo(),
        CELLZOO_VOTING: cellzoo("--majority-voting"),
        CELLTYPIST: lambda path, out: scale.celltypist_task("celltypist", path, model, out),
        CELLTYPIST_VOTING: lambda path, out: scale.celltypist_task("celltypist", path, model, out, "voting"),
    }
    rows = []
    for n_cells in sizes:
        path = cached_synthetic(n_cells, data_dir=data_dir)
        for tool, command in tools.items():
            out = data_dir / f"voted-{n_cells}.h5ad"
            scale.evict(path)
            run = scale.measure(command(path, out), mem_limit_gb=mem_limit_gb)
            out.unlink(missing_ok=True)
            seconds = f"{run.seconds:.1f}" if run.ok else ""
            rows.append([f"{n_cells:,}", tool, seconds, f"{run.peak_rss / scale.GB:.2f}", run.status()])
            print("  ".join(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="benchmarks/voting.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=accuracy.DEFAULT_DATA, help="the shared data folder")
    add_size_options(parser, QUICK_SIZES, "voting.md")
    args = parser.parse_args(argv)
    sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    accuracy.quiet_logs()
    command = accuracy.bench_command("voting.py", argv)
    start, load_start, env = time.perf_counter(), os.getloadavg()[0], accuracy.environment()
    with tempfile.TemporaryDirectory(prefix="cellzoo-voting-") as tmp:
        table, foreign, clusters = accuracy_rows(args.data, Path(tmp))
    accuracy_seconds = time.perf_counter() - start
    scaled = scale_rows(sizes, args.data_dir, args.mem_limit_gb)
    said = ", ".join(f"{name} {k} clusters of {n:,} cells" for name, (n, k) in clusters.items())
    text = f"""## Majority voting: cellzoo against CellTypist

Generated by `{command}` on {dt.date.today().isoformat()} in {(time.perf_counter() - start) / 60:.1f} min (accuracy
{accuracy_seconds / 60:.1f} min; git {env["commit"]}). Machine: {env["machine"]}; load average {load_start:.1f} at the
start and {os.getloadavg()[0]:.1f} at the end (times are indicative). Versions: {env["versions"]};
CellTypist {peers.celltypist_version()}.

cellzoo votes over k-means over-clusters of the model's embedding (`annotate --majority-voting`,
`runner/voting.py`; here {said}); each cluster takes its most frequent answer, `Unassigned` included.
CellTypist votes over its own over-clustering (Leiden on a neighbourhood graph of the query's expression)
with `majority_voting=True`, `best match` mode. Both trained on the SoupX PBMC reference (cellzoo: the
`pbmc` recipe's `linear`; CellTypist: its default solver, feature selection, top 300 genes).

### Accuracy on real cells (ontology level, `Unassigned` wrong)
{markdown_table(["query", "method", "ontology acc.", "macro-F1"], table)}

### Cells of another tissue: Tabula Sapiens lung through the PBMC models
Share left `Unassigned` (the non-immune cells are of no lineage the model knows; CellTypist's `best match`
mode never abstains).

{markdown_table(["method", "non-immune Unassigned", "immune Unassigned"], foreign)}

### Time and memory on SYNTHETIC queries
One fresh process per run (`benchmarks/scale.py`'s measurement: the input's pages dropped from the page cache
first, peak RSS of the process tree, killed above {args.mem_limit_gb:g} GB). cellzoo streams the query
(`--backed`); CellTypist reads it whole, as its users do.

{markdown_table(["cells", "run", "wall s", "peak RSS GB", "status"], scaled)}

### Reproduce
    {command}
"""
    return publish(args.docs_dir, "voting.md", text)


if __name__ == "__main__":
    main()
