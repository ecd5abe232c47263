"""How the `linear` family treats genes a query lacks: the measurement behind its design.

Trains the `pbmc` recipe's model (same code and parameters) on the SoupX reference, then scores
cross-study queries at the Cell Ontology level with four ways of handling the model genes that the
query does not have, plus the upper reference of retraining on exactly the query's genes:

    python benchmarks/panel_adaptation.py [--data ../shared/data]

Prints a Markdown table (used in docs/design.md).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

from model_zoo.linear import compute, train
from model_zoo.metrics import ontology_accuracy

ROOT = Path(__file__).resolve().parent.parent
QUERIES = {"Kang 2018": ("pbmc/kang2018_pbmc.h5ad", "cluster_id")}


def ontology_table(data: Path) -> dict[tuple[str, str], str]:
    with open(data / "labels_to_ontology.csv") as fh:
        return {(r["dataset"], r["label"]): r["ontology_term_id"] for r in csv.DictReader(fh)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    recipe = yaml.safe_load((ROOT / "model_zoo" / "recipes" / "pbmc.yaml").read_text())
    ref = ad.read_h5ad(args.data / "pbmc" / "soupx_pbmc4k.h5ad")
    ref = ref[ref.obs["Annotation"] != "?"]
    labels = ref.obs["Annotation"].astype(str).to_numpy()
    start = time.perf_counter()
    weights, _ = train.train(ref.X, ref.var_names.to_numpy(), labels, recipe["params"])
    print(f"trained in {time.perf_counter() - start:.1f} s; {len(weights.genes)} model genes\n")
    terms = {c: recipe["labels"][c]["ontology_term_id"] for c in weights.classes}
    table = ontology_table(args.data)
    rows = []
    for name, (file, column) in QUERIES.items():
        query = ad.read_h5ad(args.data / file)
        truth = np.array([table[(file, str(v))] for v in query.obs[column]])
        position = pd.Index(query.var_names).get_indexer(weights.genes)
        present = position >= 0
        counts = sp.csr_matrix((query.n_obs, len(weights.genes)))
        counts = sp.lil_matrix(counts)
        counts[:, np.flatnonzero(present)] = query.X[:, position[present]]
        counts = counts.tocsr()
        size = compute.estimate_library_size(counts, present, weights.count_share)
        log_expr = compute.log_normalise(counts, size).toarray()
        latent = compute.project(log_expr, present, weights)
        mean_filled = log_expr.copy()
        mean_filled[:, ~present] = weights.pca_mean[~present]
        variants = {
            "missing genes read as zero (CellTypist's behaviour)": log_expr,
            "missing genes set to the reference mean": mean_filled,
            "missing genes imputed from the PCA (shipped)": compute.impute_missing(log_expr, latent, present, weights),
        }
        for variant, x in variants.items():
            pred = weights.classes[(x @ weights.coef.T + weights.intercept).argmax(axis=1)]
            rows.append((name, variant, int(present.sum()), ontology_accuracy([terms[p] for p in pred], truth)))
        # upper reference: retrain on the reference restricted to exactly the query's genes
        panel = pd.Index(ref.var_names).isin(query.var_names)
        ref_counts = sp.csr_matrix(ref.X[:, panel])
        x_ref = compute.log_normalise(ref_counts, np.asarray(ref_counts.sum(axis=1)).ravel())
        oracle = compute.fit_logistic(x_ref, labels, c=recipe["params"]["C"], seed=0)
        q_counts = sp.csr_matrix(query.X[:, pd.Index(query.var_names).get_indexer(ref.var_names[panel])])
        x_q = compute.log_normalise(q_counts, np.asarray(q_counts.sum(axis=1)).ravel())
        pred = oracle.predict(x_q)
        rows.append(
            (
                name,
                "retrained on the query's genes (needs the reference data)",
                int(panel.sum()),
                ontology_accuracy([terms[p] for p in pred], truth),
            )
        )
    print("| query | genes the query lacks | model genes present | ontology-level accuracy |")
    print("|---|---|---|---|")
    for name, variant, n, acc in rows:
        print(f"| {name} | {variant} | {n} | {acc:.3f} |")


if __name__ == "__main__":
    main()
