"""A targeted lung panel (issue 14): the zoo's `lung` model against a panel-exact model on ~480 genes.

    python benchmarks/lung_panel.py [--data ../shared/data] [--docs-dir docs/benchmarks] [--make-panel]

A spatial query (MERFISH, Xenium, CosMx) measures a few hundred genes. The panel here is
``benchmarks/panels/lung-480.txt``; ``--make-panel`` remakes it (see its header: the top marker genes of
each Tabula Sapiens lung type, as a lab designs a panel from a reference atlas; not a commercial panel).
The Travaglini 2020 cells, restricted to the panel's genes, are the query; they are annotated with

- the zoo's `lung` model as shipped (trained on both studies, so these cells are not unseen by it: an
  upper bound), and the same recipe trained on Tabula Sapiens alone on all its genes (the fair
  comparison: a whole-transcriptome model meeting a panel);
- a panel-exact model: the recipe trained on Tabula Sapiens on exactly the panel's genes
  (``cellzoo build lung --reference ... --genes-from panel``), with the time its build takes.

Scored at the finest level (the finest guess's Cell Ontology id is the truth's, or an ancestor or
descendant of it) and at the lineage level (``K_lineage`` against the truth's lineage).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import yaml

if not __package__:  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import markdown_table, publish
from model_zoo import build
from model_zoo.metrics import ontology_match
from model_zoo.ontology import class_hierarchy
from runner.annotate import annotate
from runner.options import CheckOptions, RunOptions

ROOT = Path(__file__).resolve().parent.parent
PANEL = ROOT / "benchmarks" / "panels" / "lung-480.txt"
TS, TRAVAGLINI = "lung/tabula_sapiens_lung.h5ad", "lung/travaglini2020_lung.h5ad"
PANEL_SIZE = 480
KEY = "zoo"
LOCAL = RunOptions(env_manager="local")
ANY_OVERLAP = CheckOptions(min_gene_overlap=0.0)  # the zoo model meets the panel whatever the overlap


def make_panel(data: Path, size: int = PANEL_SIZE) -> list[str]:
    """The top Wilcoxon marker genes of each harmonised Tabula Sapiens lung type (log1p CP10k), dealt
    round-robin until ``size`` genes, among the genes Travaglini 2020 also measures."""
    import scanpy as sc

    recipe, _ = build.load_recipe("lung")
    cells, _, _, _ = build.prepare_reference(recipe, [data / TS])
    measured = set(ad.read_h5ad(data / TRAVAGLINI, backed="r").var_names)
    adata = ad.AnnData(cells.counts.astype(np.float32), var=pd.DataFrame(index=cells.genes))
    adata.obs["type"] = cells.labels.astype(str)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.tl.rank_genes_groups(adata, "type", method="wilcoxon", n_genes=200)
    ranked = adata.uns["rank_genes_groups"]["names"]
    panel: list[str] = []
    for row in ranked:  # rank by rank across the types
        for gene in row:
            if gene in measured and gene not in panel and len(panel) < size and not gene.startswith("MT-"):
                panel.append(str(gene))
    return sorted(panel)


def write_panel(genes: list[str], path: Path = PANEL) -> None:
    header = (
        f"# A {len(genes)}-gene lung panel for benchmarks/lung_panel.py, made by `python benchmarks/lung_panel.py "
        "--make-panel`:\n# the top Wilcoxon marker genes (scanpy rank_genes_groups on log1p CP10k) of each Tabula "
        "Sapiens lung cell type\n# (harmonised as the `lung` recipe does), taken rank by rank across the types, "
        "among the genes that\n# Travaglini 2020 also measures; mitochondrial genes left out. Derived from the "
        "data, as a lab designs\n# a panel from a reference atlas: not a commercial panel (Xenium / MERFISH / "
        "CosMx lists are not available here).\n"
    )
    path.write_text(header + "\n".join(genes) + "\n")


def panel_query(data: Path, genes: np.ndarray, out: Path) -> Path:
    """The Travaglini cells on the panel's genes alone: what a spatial assay measures."""
    adata = ad.read_h5ad(data / TRAVAGLINI)
    adata[:, adata.var_names.isin(genes)].copy().write_h5ad(out)
    return out


def lineage_of(terms: np.ndarray) -> np.ndarray:
    """Each Cell Ontology id's lineage term (model_zoo/data/ontology_levels.csv), '' where it has none."""
    unique = sorted(set(map(str, terms)))
    levels = class_hierarchy(unique, dict(zip(unique, unique, strict=True)))["levels"]["lineage"]
    table = {
        t: levels["ontology_term_ids"][g] if g >= 0 else "" for t, g in zip(unique, levels["class_group"], strict=True)
    }
    return np.array([table[str(t)] for t in terms])


def score(annotated: Path, truth: np.ndarray) -> dict:
    result = ad.read_h5ad(annotated)
    finest = result.obs[f"{KEY}_finest_ontology_term_id"].astype(str).to_numpy()
    answer = result.obs[f"{KEY}_ontology_term_id"].astype(str).to_numpy()
    lineage = result.obs[f"{KEY}_lineage_ontology_term_id"].astype(str).to_numpy()
    truth_lineage = lineage_of(truth)
    overlap = result.uns[KEY]["gene_overlap"]
    return {
        "model genes in the query": f"{overlap['present']}/{overlap['model_genes']}",
        "finest (ontology level)": np.mean([ontology_match(p, t) for p, t in zip(finest, truth, strict=True)]),
        "answer (back-off, Unassigned wrong)": np.mean(
            [ontology_match(p, t) for p, t in zip(answer, truth, strict=True)]
        ),
        "lineage": float(np.mean((lineage == truth_lineage) & (truth_lineage != ""))),
        "Unassigned": float(np.mean(result.obs[f"{KEY}_predicted"].astype(str) == "Unassigned")),
    }


def run(data: Path, work: Path) -> tuple[list[dict], dict]:
    panel = build.read_gene_list(PANEL)
    query = panel_query(data, panel, work / "travaglini_panel.h5ad")
    truth = ad.read_h5ad(query, backed="r").obs["cell_ontology_id"].astype(str).to_numpy()
    recipe, _ = build.load_recipe("lung")
    recipe["name"] = "lung-ts"
    recipe_path = work / "lung-ts.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    models = {"zoo `lung` 1.0.0 (both studies; these cells not unseen)": "lung"}
    models["`lung` recipe on Tabula Sapiens, all genes"] = str(
        build.build(str(recipe_path), [data / TS], work / "full", timing_cells=0)
    )
    start = time.perf_counter()
    panel_model = build.build(str(recipe_path), [data / TS], work / "panel", timing_cells=0, genes_from=PANEL)
    build_seconds = time.perf_counter() - start
    models["panel-exact: Tabula Sapiens on the panel's genes"] = str(panel_model)
    rows = []
    for name, model in models.items():
        out = work / "annotated.h5ad"
        annotate(query, model, output=out, key_added=KEY, overwrite=True, checks=ANY_OVERLAP, run=LOCAL)
        rows.append({"model": name, **score(out, truth)})
        print(rows[-1], flush=True)
    return rows, {"panel genes": len(panel), "panel build seconds": round(build_seconds, 1)}


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def report(rows: list[dict], facts: dict) -> str:
    header = list(rows[0])
    table = markdown_table(header, [[_fmt(row[c]) for c in header] for row in rows])
    return f"""## A targeted lung panel

`python benchmarks/lung_panel.py`: the Travaglini 2020 cells restricted to the {facts["panel genes"]} genes of
`benchmarks/panels/lung-480.txt` (top Tabula Sapiens markers per type; see the file's header), annotated by
the zoo's model and by a panel-exact model trained on Tabula Sapiens on exactly those genes (`cellzoo build
lung --reference tabula_sapiens_lung.h5ad --genes-from panel`, built in **{facts["panel build seconds"]} s**
on this machine). Finest: the most probable class is right at the Cell Ontology level; answer: the
back-off answer, `Unassigned` counted wrong; lineage: `K_lineage` equals the truth's lineage term.

{table}
"""


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--docs-dir", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--make-panel", action="store_true", help="remake benchmarks/panels/lung-480.txt first")
    args = parser.parse_args(argv)
    if args.make_panel:
        write_panel(make_panel(args.data))
    with tempfile.TemporaryDirectory(prefix="cellzoo-panel-") as tmp:
        rows, facts = run(args.data, Path(tmp))
    text = report(rows, facts)
    return publish(args.docs_dir, "lung_panel.md", text)


if __name__ == "__main__":
    main()
