"""The programs that `benchmarks/scale.py` runs and measures, each in a fresh process.

    python -m benchmarks.scale_tasks raw FILE                         # read X's arrays into reused buffers (the floor)
    python -m benchmarks.scale_tasks stream FILE                      # read X in chunks with anndata's backed reader
    python -m benchmarks.scale_tasks read FILE                        # anndata.read_h5ad of the whole file
    python -m benchmarks.scale_tasks celltypist-train REFERENCE MODEL # train CellTypist like the `pbmc` model
    python -m benchmarks.scale_tasks celltypist FILE MODEL OUTPUT [voting] # what a CellTypist user runs
    python -m benchmarks.scale_tasks scanvi-curve QUERY EPOCHS...     # pbmc-scanvi: time and accuracy per epochs
    python -m benchmarks.scale_tasks overhead QUERY                   # load and predict of `pbmc`, in-process
    python -m benchmarks.scale_tasks cuda                             # is a GPU available to torch?

Tasks that report numbers print one JSON line last. CellTypist is imported only here (it is not a
dependency of cellzoo); its tasks run in CellTypist's own environment (`benchmarks.peers.celltypist_env`).
"""

from __future__ import annotations

import json
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

STREAM_CELLS = 10_000  # cells per chunk of the streamed read (the runner's default batch size)
UNASSIGNED_THRESHOLD = 0.5  # the runner's default: cells less certain than this count as wrong
REFERENCE_DROP = "?"  # the SoupX reference's unlabelled cells, dropped from training as the pbmc recipe does


def raw(path: str) -> None:
    """The floor: every stored value of X (``data`` and ``indices``), ``STREAM_CELLS`` cells at a time, read
    by h5py into one pair of buffers that is reused (no new memory for each chunk), summed so it is used."""
    import h5py

    with h5py.File(path, "r") as f:
        indptr, data, indices = f["X/indptr"][()], f["X/data"], f["X/indices"]
        n_cells, total = len(indptr) - 1, 0.0
        chunks = list(pairwise(int(v) for v in indptr[[*range(0, n_cells, STREAM_CELLS), n_cells]]))
        most = max(last - first for first, last in chunks)  # stored values in the largest chunk
        values, columns = np.empty(most, data.dtype), np.empty(most, indices.dtype)
        for first, last in chunks:
            if last > first:
                data.read_direct(values, np.s_[first:last], np.s_[: last - first])
                indices.read_direct(columns, np.s_[first:last], np.s_[: last - first])
            total += float(values[: last - first].sum()) + float(columns[: last - first].sum())
    print(json.dumps({"cells": n_cells, "checksum": total}))


def stream(path: str) -> None:
    """Every stored value of X, ``STREAM_CELLS`` cells at a time, read with anndata's backed sparse dataset
    (new arrays for each chunk)."""
    import h5py
    from anndata.io import sparse_dataset

    with h5py.File(path, "r") as f:
        x = sparse_dataset(f["X"])
        n_cells, total = x.shape[0], 0.0
        for start in range(0, n_cells, STREAM_CELLS):
            block = x[start : start + STREAM_CELLS]
            total += float(block.data.sum()) + float(block.indices.sum())
    print(json.dumps({"cells": n_cells, "checksum": total}))


def read(path: str) -> None:
    """Read the whole file into memory, as an in-memory tool must before it can annotate."""
    import anndata as ad

    adata = ad.read_h5ad(path)
    print(json.dumps({"cells": adata.n_obs, "checksum": float(adata.X.sum())}))


def celltypist_train(reference: str, model: str) -> None:
    """CellTypist's model for the `pbmc` labels: log1p CP10k, the top 300 genes per class (as our `linear`)."""
    import anndata as ad
    import celltypist
    import scanpy as sc

    from benchmarks.synthetic import LABEL  # imports anndata: not at the top, so the read floors do not pay for it

    adata = ad.read_h5ad(reference)
    adata = adata[adata.obs[LABEL] != REFERENCE_DROP].copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    # its default solver (lbfgs), as its users run it: its own environment has the scikit-learn it supports
    trained = celltypist.train(adata, labels=LABEL, feature_selection=True, top_genes=300, n_jobs=1)
    trained.write(model)


def celltypist_annotate(path: str, model: str, output: str, voting: str = "") -> None:
    """What a CellTypist user does: read, normalise, annotate (with ``voting``: its majority voting, over its
    own over-clustering), store the predictions, write the h5ad."""
    import celltypist
    import scanpy as sc

    adata = sc.read_h5ad(path)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    predictions = celltypist.annotate(adata, model=model, majority_voting=voting == "voting")
    predictions.to_adata().write_h5ad(output)


def _checked_query(path: str, model_ref: str):
    """The model's info and the query as the runner checks and aligns it (cells x model genes)."""
    from runner.invoke import read_model_info
    from runner.options import CheckOptions
    from runner.query import check_query
    from runner.readers import read_input
    from runner.resolve import resolve_model_ref
    from runner.sources import MemoryQuery

    info = read_model_info(resolve_model_ref(model_ref).path)
    adata, found = read_input(Path(path))
    return info, adata, check_query(MemoryQuery(adata, found, None), info, CheckOptions())


def scanvi_curve(path: str, *epochs: str) -> None:
    """`pbmc-scanvi` on a labelled query for each number of surgery epochs: seconds, cells/s, ontology accuracy.

    Accuracy is at the Cell Ontology level with the query's labels mapped by the recipe's ``evaluation``
    table; as the runner reports it, cells above the default uncertainty threshold count as wrong.
    """
    import yaml

    from model_zoo.metrics import ontology_match
    from model_zoo.scanvi.pyfunc import QUERY_EPOCHS
    from runner.invoke import call_predict, load_pyfunc, run_params

    info, adata, checked = _checked_query(path, "pbmc-scanvi")
    recipe = yaml.safe_load((Path(__file__).parent.parent / "model_zoo/recipes/pbmc-scanvi.yaml").read_text())
    spec = next(s for s in recipe["evaluation"] if s["file"] == Path(path).name)
    labels = adata.obs[spec["label_column"]].astype(str).to_numpy()
    scored = np.isin(labels, list(spec["labels"]))
    truth = [spec["labels"][label] for label in labels[scored]]
    model = load_pyfunc(info)
    counts = checked.aligned
    call_predict(model, counts[:200], run_params(checked.alignment.present, info.genes, {QUERY_EPOCHS: 1}))  # warm-up
    rows = []
    for n_epochs in map(int, epochs):
        params = run_params(checked.alignment.present, info.genes, {QUERY_EPOCHS: n_epochs})
        start = time.perf_counter()
        out = call_predict(model, counts, params)  # CSR: past MLflow's DataFrame signature, as the runner
        seconds = time.perf_counter() - start
        assigned = out["uncertainty"].to_numpy()[scored] <= UNASSIGNED_THRESHOLD
        terms = out["ontology_term_id"].to_numpy()[scored]
        correct = np.array([ontology_match(p, t) for p, t in zip(terms, truth, strict=True)])
        rows.append(
            {
                "epochs": n_epochs,
                "seconds": round(seconds, 2),
                "cells_per_s": round(counts.shape[0] / seconds, 1),
                "accuracy": round(float((correct & assigned).mean()), 4),
            }
        )
        print(rows[-1], file=sys.stderr)
    default = model.unwrap_python_model().weights.query_epochs
    print(json.dumps({"cells": counts.shape[0], "scored": int(scored.sum()), "default_epochs": default, "rows": rows}))


def overhead(path: str) -> None:
    """Seconds of the parts of an `annotate -m pbmc` run on a small query, timed in this one process."""
    start = time.perf_counter()
    from runner.invoke import call_predict, load_pyfunc, run_params

    info, _, checked = _checked_query(path, "pbmc")
    read_and_check = time.perf_counter() - start
    start = time.perf_counter()
    model = load_pyfunc(info)
    load = time.perf_counter() - start
    start = time.perf_counter()
    call_predict(model, checked.aligned, run_params(checked.alignment.present, info.genes))
    predict = time.perf_counter() - start
    print(json.dumps({"read_and_check_s": read_and_check, "load_model_s": load, "predict_s": predict}))


def cuda() -> None:
    import torch

    print(json.dumps({"cuda": torch.cuda.is_available()}))


TASKS = {
    "raw": raw,
    "stream": stream,
    "read": read,
    "celltypist-train": celltypist_train,
    "celltypist": celltypist_annotate,
    "scanvi-curve": scanvi_curve,
    "overhead": overhead,
    "cuda": cuda,
}

if __name__ == "__main__":
    TASKS[sys.argv[1]](*sys.argv[2:])
