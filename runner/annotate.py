"""One annotation run: resolve the model, read and check the query, align, predict, write atomically."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from runner import __version__, keys
from runner.envs import choose_manager, ensure_env, read_env_spec
from runner.errors import UsageError
from runner.files import Outputs, check_writable_path, is_temporary_of, same_file
from runner.invoke import load_pyfunc, predict_batch, predict_in_env, read_model_info, run_params
from runner.keys import ResultKeys
from runner.options import CheckOptions, ModelOptions, ReadOptions, RunOptions
from runner.query import CheckedQuery, check_cells, check_query, checked_counts, row_sums
from runner.resolve import ResolvedModel
from runner.sources import open_query
from runner.tuning import model_threads
from runner.write import (
    check_keys_free,
    check_table_path,
    make_barcodes_unique,
    write_results,
    write_table_atomic,
)

logger = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a run did, for the CLI's summary and for tests."""

    output: Path | None
    table: Path | None
    key: str
    model: str
    n_cells: int
    genes_present: int
    model_genes: int
    counts: str = "X"
    counts_rebuilt: bool = False
    label_counts: dict[str, int] = field(default_factory=dict)
    mean_uncertainty: float = 0.0
    environment: str = "local"
    adata: Any = field(default=None, repr=False)  # the AnnData the results were written into

    def lines(self) -> list[str]:
        width = max((len(k) for k in self.label_counts), default=0)
        return [
            f"model       {self.model}",
            f"cells       {self.n_cells}",
            f"counts      {'warning: ' if self.counts_rebuilt else ''}{self.counts}",
            f"genes       {self.genes_present} of the model's {self.model_genes} "
            f"({self.genes_present / self.model_genes:.1%}) found in the query",
            "labels",
            *(f"  {label:<{width}}  {n}" for label, n in self.label_counts.items()),
            f"uncertainty mean {self.mean_uncertainty:.3f}",
            f"environment {self.environment}",
            *([f"output      {self.output}  (key {self.key!r})"] if self.output else []),
            *([f"table       {self.table}"] if self.table else []),
        ]


INPUT_SUFFIXES = (".gz", ".zip", ".tgz", ".tar", ".h5ad", ".h5", ".hdf5", ".loom", ".zarr", ".csv", ".tsv", ".txt")


def default_output(input_path: Path) -> Path:
    """``INPUT.annotated.h5ad`` beside the input, without the input's format suffixes (``x.csv.gz`` -> ``x``)."""
    name = input_path.resolve().name
    while Path(name).suffix.lower() in INPUT_SUFFIXES and Path(name).stem:
        name = Path(name).stem
    return input_path.resolve().with_name(f"{name}.annotated.h5ad")


def check_output_names(input_path: Path, output: Path, table: Path | None, key_added: str | None) -> None:
    """Refuse outputs that would overwrite the input or each other, and a key that cannot be written, before
    anything is read."""
    for flag, path in (("-o", output), ("--table", table)):
        if path is None:
            continue
        if same_file(path, input_path):
            raise UsageError(f"{flag} {path} is the input; cellzoo never modifies its input: choose another path")
        if is_temporary_of(input_path, path):  # it would be swept as a killed run's leftover
            raise UsageError(
                f"the input {input_path} is named like a temporary file of {flag} {path}; rename the input"
            )
        check_writable_path(flag, path)
    if table is not None and same_file(table, output):
        raise UsageError(f"-o and --table are both {output}: one would replace the other; give two paths")
    if key_added is not None:
        ResultKeys(key_added)  # refuses a key that cannot be written


def annotate(
    input_path: Path,
    model_ref: str,
    *,
    output: Path | None = None,
    table: Path | None = None,
    key_added: str | None = None,
    overwrite: bool = False,
    read: ReadOptions | None = None,
    checks: CheckOptions | None = None,
    run: RunOptions | None = None,
    source: ModelOptions | None = None,
) -> Summary:
    """Annotate the cells of ``input_path`` (any format of :func:`runner.readers.read_input`) with a model: the
    ``annotate`` command.

    Writes the annotated h5ad to ``output`` (the matrix as read plus all results, see :func:`annotate_query`)
    and, with ``table``, one row per cell to a csv, tsv or parquet file. The input is never modified; outputs
    are written to temporary files and renamed into place. ``read``, ``checks``, ``run`` and ``source`` are
    the run's options (:mod:`runner.options`); ``run.backed`` streams an h5ad from disk ``run.batch_size``
    cells at a time (``None``: when it is large; see :mod:`runner.sources`).
    """
    read, checks = read or ReadOptions(), checks or CheckOptions()
    run, source = run or RunOptions(), source or ModelOptions()
    output = output or default_output(input_path)
    check_output_names(input_path, output, table, key_added)
    outputs = Outputs([output, table], overwrite=overwrite)  # refuses existing ones; removes them if the run fails
    if table is not None:
        check_table_path(table)

    query = open_query(input_path, read, checks.counts_layer, run.backed)
    try:
        outputs.claim()  # of several runs writing one path, one wins
        for note in query.found.notes:
            logger.warning("%s: %s", input_path.name, note)
        resolved = source.resolve(model_ref)
        summary = annotate_query(
            query, resolved, key_added=key_added, overwrite=overwrite, checks=checks, run=run, read=read, output=output
        )
        outputs.written(output)  # renamed into place when the run's block ended (a streamed output too)
        if table is not None:
            write_table_atomic(summary.adata, ResultKeys(summary.key), table)
            outputs.written(table)
            summary.table = table
        outputs.keep()
    finally:
        query.close()
        outputs.close()
    return summary


def annotate_query(
    query,
    resolved: ResolvedModel,
    *,
    key_added: str | None,
    overwrite: bool,
    checks: CheckOptions,
    run: RunOptions,
    read: ReadOptions | None = None,
    output: Path | None = None,
) -> Summary:
    """The core of every run (the ``annotate`` command and :func:`runner.api.annotate`): check ``query``
    (:func:`runner.query.check_query`), run the model ``resolved`` over it a block of cells at a time, and
    write the results into the query's AnnData (:func:`runner.write.write_results`), then to ``output``
    where the query is a file (:mod:`runner.sources`). Nothing is written unless every block succeeded.

    Writes (key ``K``: ``key_added``, else the model's name)
    ------
    ``obs[K_predicted]``, ``obs[K_ontology_term_id]``, ``obs[K_uncertainty]``, ``obs[K_novelty]``,
    ``obs[K_finest]``, ``obs[K_finest_ontology_term_id]``, ``obs[K_answer_kind]``, ``obs[K_<level>]`` and
    ``obs[K_<level>_ontology_term_id]`` (compartment, lineage), ``obsm[K_probabilities]`` (cells x classes;
    ``uns[K]['classes']`` names the columns), ``obsm[X_K]``, ``obsm[X_K_umap]``
        the model's answers, as :func:`runner.write.write_results` documents them.
    ``uns[K]``
        provenance: ``model`` (name, version, family, the reference given, resolved ``url``, ``sha256``,
        ``registry_version``, ``tracking_uri``, what ``uncertainty`` means), ``runner_version``, ``date``
        (UTC), ``input`` (file name; '' for an AnnData), ``input_format``, ``params`` (every option of
        ``checks`` and ``run``; ``environment``: where the model ran; ``counts``: where the raw counts came
        from, and how they were rebuilt from log1p-normalised values if they were; ``gene_names``: where the
        gene names came from and any mapping; ``species``; ``read_options``: the reading flags; ``streamed``),
        ``cells`` (the numbers of ``empty``, ``no_model_genes`` and ``duplicate_barcodes`` cells) and
        ``gene_overlap`` (``model_genes``, ``present_before_mapping``, ``present``, ``fraction``,
        ``summed_duplicates``).
    """
    info = read_model_info(resolved.path)
    result_keys = ResultKeys(key_added or info.name)
    check_keys_free(query.existing(), result_keys, overwrite)
    checked = check_query(query, info, checks, run.batch_size)  # the first block, checked: fail fast
    alignment = checked.alignment
    answer_options = {
        keys.UNASSIGNED_THRESHOLD: run.unassigned_threshold,
        keys.NOVELTY_THRESHOLD: run.novelty_threshold,
        keys.BACKOFF: run.backoff,
    }
    params = run_params(alignment.present, info.genes, answer_options | ({"device": run.device} if run.device else {}))
    with query.output(output, result_keys.obsm_keys()) as write_output:  # a streamed query's copy begins now
        frame, cells, environment = _predict(query, checked, info, params, run)
        if query.rebuild is not None:
            logger.warning("%s", query.rebuild.describe())
        provenance = {
            "model": {
                "name": info.name,
                "version": str(info.metadata.get("version", "")),
                "family": str(info.metadata.get("family", "")),
                "reference": resolved.reference,
                "url": resolved.url,
                "sha256": resolved.sha256,
                "registry_version": resolved.registry_version,
                "tracking_uri": resolved.tracking_uri,
                "uncertainty": str(info.metadata.get("uncertainty", "")),
            },
            "runner_version": __version__,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "input": query.found.path.name if query.found.path else "",
            "input_format": query.found.format,
            "params": {
                **run.provenance(),
                **checks.provenance(),
                "environment": environment,
                "counts": query.counts,
                "gene_names": alignment.source,
                "species": checked.genes.species.name,
                "read_options": " ".join(read.cli_args()) if read else "",
                "streamed": query.streamed,
            },
            "cells": {
                "empty": int(cells.empty.sum()),
                "no_model_genes": int(cells.no_overlap.sum()),
                "duplicate_barcodes": cells.n_duplicate_barcodes,
            },
            "gene_overlap": {
                "model_genes": len(info.genes),
                "present_before_mapping": alignment.n_before,
                "present": alignment.n_present,
                "fraction": round(alignment.fraction, 4),
                "summed_duplicates": alignment.n_duplicates,
            },
        }
        target = query.target()
        if query.rename_duplicate_barcodes:
            make_barcodes_unique(target)  # before the results, so that every field is indexed by the unique names
        write_results(
            target,
            frame,
            result_keys,
            unassigned_threshold=run.unassigned_threshold,
            provenance=provenance,
            no_signal=cells.no_signal,
            majority_voting=run.majority_voting,
        )
        write_output(target)
    predicted = target.obs[result_keys.predicted]
    return Summary(
        output=output,
        table=None,
        key=result_keys.key,
        model=f"{info.name} {provenance['model']['version']} ({resolved.url})",
        n_cells=target.n_obs,
        genes_present=alignment.n_present,
        model_genes=len(info.genes),
        counts=query.counts,
        counts_rebuilt=query.rebuild is not None,
        label_counts={str(k): int(v) for k, v in predicted.value_counts().items() if v},
        mean_uncertainty=float(np.mean(target.obs[result_keys.uncertainty])),
        environment=_describe(environment),
        adata=target,
    )


def _predict(query, checked: CheckedQuery, info, params, run: RunOptions):
    """Read, check and align the query a block of cells at a time and run the model on each block
    (in this process), or on all aligned blocks at once: in the model's own environment, or when the model
    maps the whole query (``scanvi``: one scArches surgery for the query, so that no label depends on the
    block size). ``checked``: the first block, already read and checked, and the query's genes.

    Returns the model's output (one row per cell), the :class:`runner.query.Cells` found, and where it ran.
    """
    spec = read_env_spec(info.path)
    manager = choose_manager(run.env_manager, spec)
    batch_size = run.batch_size
    environment: dict = {"manager": manager}
    per_block = manager == "local" and not info.maps_whole_query
    # on a cluster the workers load the model (runner.cluster.ShippedModel), not this process
    model = load_pyfunc(info) if manager == "local" and not run.scheduler else None
    cluster = _cluster(run, info, per_block)
    if cluster is not None:
        environment["scheduler"] = run.scheduler
    outputs, totals, in_model, kept_totals = [], [], [], []
    n_blocks = -(-query.n_obs // batch_size)
    pattern = info.metadata.get(keys.CELL_TOTALS_EXCLUDE)  # the genes the model's novelty totals leave out
    excluded = checked.alignment.matching(pattern) if pattern else None
    blocks = aligned_blocks(query, checked, batch_size, excluded)
    try:
        with model_threads():
            for total, total_in_model, kept, aligned in tqdm(
                blocks, total=n_blocks, desc="annotate", unit="batch", disable=n_blocks < 2
            ):
                totals.append(total)
                in_model.append(total_in_model)
                kept_totals.append(kept)
                if cluster is not None:
                    cluster.submit(aligned, _with_totals(params, kept))
                else:
                    outputs.append(predict_batch(model, aligned, _with_totals(params, kept)) if per_block else aligned)
        if cluster is not None:
            outputs = cluster.results()
    finally:
        if cluster is not None:
            cluster.close()
    cells = check_cells(np.concatenate(totals), np.concatenate(in_model), query.obs_names)
    for line in cells.warnings() + checked.genes.warnings:
        logger.warning(line)
    if per_block:
        return pd.concat(outputs, ignore_index=True), cells, environment
    counts, cell_totals = sp.vstack(outputs, format="csr"), np.concatenate(kept_totals)
    if model is not None:  # the whole query in one call
        with model_threads():
            return predict_batch(model, counts, _with_totals(params, cell_totals)), cells, environment
    python, record = ensure_env(spec, manager)
    environment |= {"key": record["key"], "reused": record["reused"], "build_seconds": record["seconds"]}
    in_env_batch = counts.shape[0] if info.maps_whole_query else batch_size
    return predict_in_env(python, info, counts, cell_totals, params, max(in_env_batch, 1)), cells, environment


def _cluster(run: RunOptions, info, per_block: bool):
    """The :class:`runner.cluster.ClusterPredictor` of ``--scheduler`` (None without it); refuses a model that
    cannot run block by block in the workers' interpreter."""
    if not run.scheduler:
        return None
    if info.maps_whole_query:
        raise UsageError(
            f"--scheduler annotates blocks of cells on the workers; model {info.name} maps the whole query at "
            "once (one scArches surgery): run it without --scheduler"
        )
    if not per_block:
        raise UsageError(
            f"--scheduler runs the model in the workers' Python, and model {info.name} needs an environment of its "
            f"own here (--env-manager {run.env_manager}): install its pins (requirements.txt) where annotate and "
            "the workers run, or run it without --scheduler"
        )
    from runner.cluster import ClusterPredictor

    return ClusterPredictor(run.scheduler, info.path, info.name)


def _with_totals(params: dict | None, totals: np.ndarray) -> dict:
    """``params`` with each cell's total count over the query's genes but the model's technical ones (the
    model's novelty score)."""
    return (params or {}) | {keys.CELL_TOTALS: totals}


def aligned_blocks(
    query, checked: CheckedQuery, batch_size: int, excluded: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, sp.csr_matrix]]:
    """Each block of cells read, checked for counts and aligned to the model's genes: (each cell's total count,
    its total over the model's genes, its total without the ``excluded`` query genes (the technical genes the
    model's novelty score leaves out; a 0/1 vector), the aligned counts); the first block is
    ``checked.first``. The next block is prepared in a second thread while the model runs on this one."""

    def prepare(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, sp.csr_matrix]:
        if start == 0:
            counts, aligned = checked.first, checked.aligned
        else:
            counts = checked_counts(query.rows(start, start + batch_size), query.source, query.others)
            aligned = checked.alignment.apply(counts)
        total = row_sums(counts)
        kept = total - counts @ excluded if excluded is not None else total
        return total, row_sums(aligned), np.asarray(kept, dtype=np.float64), aligned

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare, 0)
        for following in range(batch_size, query.n_obs, batch_size):
            block, pending = pending.result(), pool.submit(prepare, following)
            yield block
        yield pending.result()


def _describe(environment: dict) -> str:
    if "scheduler" in environment:
        return f"the workers of the dask scheduler at {environment['scheduler']}"
    if environment["manager"] == "local":
        return "local (this interpreter)"
    how = "reused" if environment["reused"] else f"built in {environment['build_seconds']} s"
    return f"{environment['manager']} {environment['key']} ({how})"
