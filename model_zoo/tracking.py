"""Log a built zoo model to an MLflow tracking server (``cellzoo build --tracking-uri``), and register it.

One run per build: the recipe file (artifact ``recipe/``), its parameters with the overrides applied, the
numbers of the model card as metrics (``held_out.accuracy``, ``cross_study.<query file stem>.ontology_accuracy``, ...),
the model directory (artifact ``model/``, a standard MLflow model) and tags naming the model. ``register``
adds the logged model to the Model Registry as a new version of that registered model.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

EXPERIMENT = "cellzoo-build"
UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")  # what MLflow allows in a metric or parameter name


def card_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a model's ``metadata['metrics']`` as flat MLflow metrics (lists of queries by name)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = UNSAFE_KEY.sub("_", f"{prefix}{key}")
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            flat[name] = float(value)
        elif isinstance(value, dict):
            flat |= card_metrics(value, f"{name}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    label = Path(str(item["file"])).stem if item.get("file") else str(item.get("name", i))
                    flat |= card_metrics(item, f"{name}.{UNSAFE_KEY.sub('_', label)}.")
    return flat


def log_build(model_dir: Path, recipe_path: Path, params: dict, tracking_uri: str, register: str | None) -> str:
    """Log the build of ``model_dir`` from ``recipe_path`` (trained with ``params``) as a run on the tracking
    server ``tracking_uri``; with ``register``, add it as a new version of that registered model. Returns
    the run id (and logs the registered version)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    metadata = yaml.safe_load((model_dir / "MLmodel").read_text())["metadata"]
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    tags = {f"cellzoo.{key}": str(metadata[key]) for key in ("name", "version", "family")}
    run = client.create_run(experiment_id, run_name=f"{metadata['name']}-{metadata['version']}", tags=tags)
    run_id = run.info.run_id
    status = "FAILED"  # until everything is logged
    try:
        logged = {"recipe": recipe_path.name, "family": metadata["family"], "n_genes": metadata["n_genes"]}
        logged |= {f"param.{k}": v for k, v in params.items()}
        for key, value in logged.items():
            client.log_param(run_id, UNSAFE_KEY.sub("_", key), str(value)[:6000])
        for key, value in card_metrics(metadata.get("metrics") or {}).items():
            client.log_metric(run_id, key, value)
        client.log_artifact(run_id, str(recipe_path), artifact_path="recipe")
        client.log_artifacts(run_id, str(model_dir), artifact_path="model")
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
    logger.info("logged run %s to %s", run_id, tracking_uri)
    if register:
        try:
            client.get_registered_model(register)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(register)
        version = client.create_model_version(register, source=f"{run.info.artifact_uri}/model", run_id=run_id)
        logger.info("registered models:/%s/%s", register, version.version)
    return run_id
