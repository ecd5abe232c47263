"""One annotation run: resolve the model, read and check the query, align, predict, write atomically."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from runner import __version__
from runner.envs import ENV_MANAGERS, choose_manager, ensure_env, read_env_spec
from runner.errors import UsageError
from runner.files import Outputs, same_file
from runner.invoke import load_pyfunc, predict_batch, predict_in_env, read_model_info, run_params
from runner.keys import ResultKeys
from runner.query import check_cells, check_genes, checked_counts, row_sums
from runner.readers import ReadOptions
from runner.resolve import resolve_model_ref
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

DEFAULT_BATCH_SIZE = 10_000
DEFAULT_UNASSIGNED_THRESHOLD = 0.5
DEFAULT_MIN_GENE_OVERLAP = 0.2


@dataclass
class Summary:
    """What a run did, for the CLI's summary and for tests."""

    output: Path
    table: Path | None
    key: str
    model: str
    n_cells: int
    genes_present: int
    model_genes: int
    label_counts: dict[str, int] = field(default_factory=dict)
    mean_uncertainty: float = 0.0
    environment: str = "local"

    def lines(self) -> list[str]:
        width = max((len(k) for k in self.label_counts), default=0)
        return [
            f"model       {self.model}",
            f"cells       {self.n_cells}",
            f"genes       {self.genes_present} of the model's {self.model_genes} "
            f"({self.genes_present / self.model_genes:.1%}) found in the query",
            "labels",
            *(f"  {label:<{width}}  {n}" for label, n in self.label_counts.items()),
            f"uncertainty mean {self.mean_uncertainty:.3f}",
            f"environment {self.environment}",
            f"output      {self.output}  (key {self.key!r})",
            *([f"table       {self.table}"] if self.table else []),
        ]


RESULT_KEY = re.compile(r"^[^/\x00]+$")
INPUT_SUFFIXES = (".gz", ".zip", ".tgz", ".tar", ".h5ad", ".h5", ".hdf5", ".loom", ".csv", ".tsv", ".txt")


def default_output(input_path: Path) -> Path:
    """``INPUT.annotated.h5ad`` beside the input, without the input's format suffixes (``x.csv.gz`` -> ``x``)."""
    name = input_path.resolve().name
    while Path(name).suffix.lower() in INPUT_SUFFIXES and Path(name).stem:
        name = Path(name).stem
    return input_path.resolve().with_name(f"{name}.annotated.h5ad")


def check_output_names(input_path: Path, output: Path, table: Path | None, key_added: str | None) -> None:
    """Refuse outputs that would overwrite the input or each other, and a key that cannot be written."""
    for flag, path in (("-o", output), ("--table", table)):
        if path is not None and same_file(path, input_path):
            raise UsageError(f"{flag} {path} is the input; cellzoo never modifies its input: choose another path")
    if table is not None and same_file(table, output):
        raise UsageError(f"-o and --table are both {output}: one would replace the other; give two paths")
    if key_added is not None and not RESULT_KEY.match(key_added):
        raise UsageError(f"--key-added {key_added!r}: a key is not empty and holds no '/' (h5ad paths use it)")


def annotate(
    input_path: Path,
    model_ref: str,
    *,
    output: Path | None = None,
    key_added: str | None = None,
    overwrite: bool = False,
    counts_layer: str | None = None,
    gene_column: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    unassigned_threshold: float = DEFAULT_UNASSIGNED_THRESHOLD,
    min_gene_overlap: float = DEFAULT_MIN_GENE_OVERLAP,
    species_map: bool = False,
    table: Path | None = None,
    read_options: ReadOptions | None = None,
    trust: bool = False,
    offline: bool = False,
    tracking_uri: str | None = None,
    registries: list[Path] | tuple[Path, ...] = (),
    env_manager: str = "auto",
    device: str | None = None,
    backed: bool | None = None,
) -> Summary:
    """Annotate the cells of ``input_path`` (any format of :func:`runner.readers.read_input`) with a model.

    Writes the annotated h5ad to ``output`` (the matrix as read plus all results) and, with
    ``table``, one row per cell to a csv, tsv or parquet file. The input is never modified; outputs
    are written to temporary files and renamed into place. See :func:`runner.write.write_results`
    for every field written. ``trust``, ``offline``, ``tracking_uri`` and ``registries`` are passed
    to :func:`runner.resolve.resolve_model_ref`; ``env_manager`` says where the model runs
    (:mod:`runner.envs`); ``device`` (e.g. ``cuda``) is handed to models that accept it. ``backed``
    streams an h5ad from disk ``batch_size`` cells at a time (``None``: when it is large; see
    :mod:`runner.sources`), so that memory does not grow with the matrix.
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if env_manager not in ENV_MANAGERS:
        raise UsageError(f"--env-manager must be one of {', '.join(ENV_MANAGERS)}, got {env_manager!r}")
    if not 0.0 <= unassigned_threshold <= 1.0:
        raise UsageError(f"--unassigned-threshold must be within [0, 1], got {unassigned_threshold}")
    output = output or default_output(input_path)
    check_output_names(input_path, output, table, key_added)
    outputs = Outputs([output, table], overwrite=overwrite)  # refuses existing ones; removes them if the run fails
    if table is not None:
        check_table_path(table)
    read_options = read_options or ReadOptions()

    query = open_query(input_path, read_options, counts_layer, backed)
    try:
        outputs.claim()  # of several runs writing one path, one wins
        for note in query.found.notes:
            logger.warning("%s: %s", input_path.name, note)
        resolved = resolve_model_ref(
            model_ref, trust=trust, offline=offline, tracking_uri=tracking_uri, registries=registries
        )
        info = read_model_info(resolved.path)
        result_keys = ResultKeys(key_added or info.name)
        check_keys_free(query.existing(), result_keys, overwrite)
        first = checked_counts(query.rows(0, batch_size), query.source, query.others)  # fail fast
        genes = check_genes(
            query.obs_names,
            query.var,
            info,
            gene_column=gene_column,
            species_map=species_map,
            min_gene_overlap=min_gene_overlap,
        )
        alignment = genes.alignment
        params = run_params(alignment.present, info.genes, {"device": device} if device else None)
        with query.output(output) as write_output:  # a streamed query's copy begins now
            frame, cells, environment = _predict(query, first, info, genes, params, env_manager, batch_size)
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
                "input": input_path.name,
                "input_format": query.found.format,
                "params": {
                    "env_manager": env_manager,
                    "environment": environment,
                    "device": device or "",
                    "batch_size": batch_size,
                    "unassigned_threshold": unassigned_threshold,
                    "min_gene_overlap": min_gene_overlap,
                    "counts": query.source,
                    "gene_names": alignment.source,
                    "species": genes.species.name,
                    "species_map": species_map,
                    "read_options": " ".join(read_options.cli_args()),
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
            make_barcodes_unique(target)  # before the results, so that every field is indexed by the unique names
            write_results(
                target,
                frame,
                result_keys,
                unassigned_threshold=unassigned_threshold,
                provenance=provenance,
                no_signal=cells.no_signal,
            )
            write_output(target)
        outputs.written(output)  # renamed into place when the block ends (a streamed output too)
        if table is not None:
            write_table_atomic(target, result_keys, table)
            outputs.written(table)
        outputs.keep()
        predicted = target.obs[result_keys.predicted]
        return Summary(
            output=output,
            table=table,
            key=result_keys.key,
            model=f"{info.name} {provenance['model']['version']} ({resolved.url})",
            n_cells=target.n_obs,
            genes_present=alignment.n_present,
            model_genes=len(info.genes),
            label_counts={str(k): int(v) for k, v in predicted.value_counts().items() if v},
            mean_uncertainty=float(np.mean(target.obs[result_keys.uncertainty])),
            environment=_describe(environment),
        )
    finally:
        query.close()
        outputs.close()


def _predict(query, first: sp.csr_matrix, info, genes, params, env_manager: str, batch_size: int):
    """Read, check and align the query a block of cells at a time and run the model on each block
    (in this process), or on all aligned blocks at once in the model's own environment. ``first``: the
    first block, already read and checked.

    Returns the model's output (one row per cell), the :class:`runner.query.Cells` found, and where it ran.
    """
    spec = read_env_spec(info.path)
    manager = choose_manager(env_manager, spec)
    environment: dict = {"manager": manager}
    model = load_pyfunc(info) if manager == "local" else None
    outputs, totals, in_model = [], [], []
    n_blocks = -(-query.n_obs // batch_size)
    blocks = _aligned_blocks(query, first, genes.alignment, batch_size)
    with model_threads():
        for total, total_in_model, aligned in tqdm(
            blocks, total=n_blocks, desc="annotate", unit="batch", disable=n_blocks < 2
        ):
            totals.append(total)
            in_model.append(total_in_model)
            outputs.append(predict_batch(model, aligned, params) if model is not None else aligned)
    cells = check_cells(np.concatenate(totals), np.concatenate(in_model), query.obs_names)
    for line in cells.warnings() + genes.warnings:
        logger.warning(line)
    if model is not None:
        return pd.concat(outputs, ignore_index=True), cells, environment
    python, record = ensure_env(spec, manager)
    environment |= {"key": record["key"], "reused": record["reused"], "build_seconds": record["seconds"]}
    return predict_in_env(python, info, sp.vstack(outputs, format="csr"), params, batch_size), cells, environment


def _aligned_blocks(
    query, first: sp.csr_matrix, alignment, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, sp.csr_matrix]]:
    """Each block of cells read, checked for counts and aligned to the model's genes: (each cell's total count,
    its total over the model's genes, the aligned counts); ``first`` is the first block, already checked. The
    next block is prepared in a second thread while the model runs on this one."""

    def prepare(start: int) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
        if start == 0:
            counts = first
        else:
            counts = checked_counts(query.rows(start, start + batch_size), query.source, query.others)
        aligned = alignment.apply(counts)
        return row_sums(counts), row_sums(aligned), aligned

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare, 0)
        for following in range(batch_size, query.n_obs, batch_size):
            block, pending = pending.result(), pool.submit(prepare, following)
            yield block
        yield pending.result()


def _describe(environment: dict) -> str:
    if environment["manager"] == "local":
        return "local (this interpreter)"
    how = "reused" if environment["reused"] else f"built in {environment['build_seconds']} s"
    return f"{environment['manager']} {environment['key']} ({how})"
