"""CellTypist as its users run it, in its own environment (celltypist 1.7.1 needs scikit-learn < 1.8).

    PYTHON benchmarks/celltypist_peer.py SPEC.json

Run by :mod:`benchmarks.peers` with the python of the peer environment; it imports nothing of cellzoo.
``SPEC.json``: ``model`` (CellTypist's own model file, written and read only by this environment),
``reference`` (an h5ad of log1p CP10k with ``obs['label']``: train and write ``model``; absent: load it),
``train`` (keyword arguments of ``celltypist.train``), ``queries`` ({name: h5ad of log1p CP10k}),
``majority_voting`` (bool), ``p_thres`` and ``out`` (a folder). Writes ``OUT/NAME.csv`` per query, one row
per cell: ``predicted_labels`` (best match), ``conf_score`` (its probability), ``prob_match`` (``mode='prob
match'`` with ``p_thres``: 'Unassigned' when no class reaches it), ``genes`` (features found / all), and with
voting ``majority_voting`` and ``conf_score_voting``. Data go in and out as h5ad and CSV, never as pickles.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import anndata as ad
import celltypist


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    start = time.perf_counter()
    if spec.get("reference"):
        reference = ad.read_h5ad(spec["reference"])
        model = celltypist.train(reference, labels=reference.obs["label"].astype(str).to_numpy(), **spec["train"])
        model.write(spec["model"])
    else:
        model = celltypist.models.Model.load(spec["model"])
    seconds = {"train": time.perf_counter() - start}
    for name, path in spec["queries"].items():
        start = time.perf_counter()
        query = ad.read_h5ad(path)
        voting = bool(spec["majority_voting"])
        best = celltypist.annotate(query, model=model, majority_voting=voting)
        table = best.to_adata(insert_conf_by="predicted_labels").obs[["predicted_labels", "conf_score"]].copy()
        if voting:
            table["majority_voting"] = best.predicted_labels["majority_voting"].astype(str)
            table["conf_score_voting"] = best.to_adata(insert_conf_by="majority_voting").obs["conf_score"]
        prob = celltypist.annotate(query, model=model, mode="prob match", p_thres=spec["p_thres"])
        table["prob_match"] = prob.predicted_labels["predicted_labels"].astype(str)
        table["genes"] = f"{int(query.var_names.isin(model.features).sum())}/{len(model.features)}"
        table.to_csv(out / f"{name}.csv")
        seconds[name] = time.perf_counter() - start
    (out / "seconds.json").write_text(json.dumps(seconds))


if __name__ == "__main__":
    main(sys.argv[1])
