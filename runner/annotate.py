"""One annotation run: resolve the model, read and check the query, align, predict, write atomically."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runner import __version__
from runner.envs import ENV_MANAGERS, choose_manager, ensure_env, read_env_spec
from runner.errors import UsageError
from runner.genes import align_genes, check_overlap
from runner.invoke import load_pyfunc, predict_in_batches, predict_in_env, read_model_info, run_params
from runner.keys import ResultKeys
from runner.query import find_counts, read_query
from runner.resolve import resolve_model_ref
from runner.write import check_keys_free, write_h5ad_atomic, write_results

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 10_000
DEFAULT_UNASSIGNED_THRESHOLD = 0.5
DEFAULT_MIN_GENE_OVERLAP = 0.2


@dataclass
class Summary:
    """What a run did, for the CLI's summary and for tests."""

    output: Path
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
        ]


def default_output(input_path: Path) -> Path:
    return input_path.with_name(f"{input_path.stem}.annotated.h5ad")


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
    env_manager: str = "auto",
    device: str | None = None,
) -> Summary:
    """Annotate the cells of ``input_path`` with a model and write the annotated h5ad to ``output``.

    The input is never modified; the output is written to a temporary file and renamed into place.
    See :func:`runner.write.write_results` for every field written. ``env_manager`` says where the
    model runs (:mod:`runner.envs`); ``device`` (e.g. ``cuda``) is handed to models that accept it.
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if env_manager not in ENV_MANAGERS:
        raise UsageError(f"--env-manager must be one of {', '.join(ENV_MANAGERS)}, got {env_manager!r}")
    if not 0.0 <= unassigned_threshold <= 1.0:
        raise UsageError(f"--unassigned-threshold must be within [0, 1], got {unassigned_threshold}")
    output = output or default_output(input_path)
    if output.resolve() == input_path.resolve():
        raise UsageError(f"the output {output} is the input; cellzoo never modifies its input: choose another -o")
    if output.exists() and not overwrite:
        raise UsageError(f"output {output} exists; pass --overwrite to replace it, or choose another -o")

    adata = read_query(input_path)
    resolved = resolve_model_ref(model_ref)
    info = read_model_info(resolved.path)
    result_keys = ResultKeys(key_added or info.name)
    check_keys_free(adata, result_keys, overwrite)
    counts = find_counts(adata, counts_layer)
    alignment = align_genes(
        counts.var, info.genes, model_id_type=info.gene_id_type, species=info.species, gene_column=gene_column
    )
    logger.info(
        "gene overlap: %d of %d model genes (%.1f%%), names from %s",
        alignment.n_present,
        len(info.genes),
        100 * alignment.fraction,
        alignment.source,
    )
    check_overlap(alignment, info.gene_id_type, min_gene_overlap, counts.var.index)

    aligned = (counts.matrix @ alignment.matrix).tocsr()
    params = run_params(alignment.present, info.genes, {"device": device} if device else None)
    spec = read_env_spec(info.path)
    manager = choose_manager(env_manager, spec)
    environment: dict = {"manager": manager}
    if manager == "local":
        frame = predict_in_batches(load_pyfunc(info), aligned, params, batch_size)
    else:
        python, record = ensure_env(spec, manager)
        environment |= {"key": record["key"], "reused": record["reused"], "build_seconds": record["seconds"]}
        frame = predict_in_env(python, info, aligned, params, batch_size)
    provenance = {
        "model": {
            "name": info.name,
            "version": str(info.metadata.get("version", "")),
            "family": str(info.metadata.get("family", "")),
            "reference": resolved.reference,
            "url": resolved.url,
            "sha256": resolved.sha256,
            "uncertainty": str(info.metadata.get("uncertainty", "")),
        },
        "runner_version": __version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "input": input_path.name,
        "params": {
            "env_manager": env_manager,
            "environment": environment,
            "device": device or "",
            "batch_size": batch_size,
            "unassigned_threshold": unassigned_threshold,
            "min_gene_overlap": min_gene_overlap,
            "counts": counts.source,
            "gene_names": alignment.source,
        },
        "gene_overlap": {
            "model_genes": len(info.genes),
            "present": alignment.n_present,
            "fraction": round(alignment.fraction, 4),
            "summed_duplicates": alignment.n_duplicates,
        },
    }
    write_results(adata, frame, result_keys, unassigned_threshold=unassigned_threshold, provenance=provenance)
    write_h5ad_atomic(adata, output)
    predicted = adata.obs[result_keys.predicted]
    return Summary(
        output=output,
        key=result_keys.key,
        model=f"{info.name} {provenance['model']['version']} ({resolved.url})",
        n_cells=adata.n_obs,
        genes_present=alignment.n_present,
        model_genes=len(info.genes),
        label_counts={str(k): int(v) for k, v in predicted.value_counts().items() if v},
        mean_uncertainty=float(np.mean(adata.obs[result_keys.uncertainty])),
        environment=_describe(environment),
    )


def _describe(environment: dict) -> str:
    if environment["manager"] == "local":
        return "local (this interpreter)"
    how = "reused" if environment["reused"] else f"built in {environment['build_seconds']} s"
    return f"{environment['manager']} {environment['key']} ({how})"
