"""`cellzoo build` logs a run to a real `mlflow server` on 127.0.0.1 and registers the model; an `@alias`
reference is resolved to its registry version, which the output records."""

from __future__ import annotations

import anndata as ad
import pytest
import yaml

from tests.conftest import data_file, run_cli

pytestmark = pytest.mark.slow


def test_build_logs_a_run_registers_the_model_and_an_alias_resolves(mlflow_tracking, tmp_path, example_copy):
    import mlflow

    uri = mlflow_tracking.uri
    reference = str(data_file("pbmc/soupx_pbmc4k.h5ad"))
    built = run_cli(
        "cellzoo", "build", "pbmc", "--reference", reference, "--out", str(tmp_path / "build"),
        "--timing-cells", "0", "--register", "labpbmc", "-q",
        env={"MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    [version] = client.search_model_versions("name='labpbmc'")
    run = client.get_run(version.run_id)
    model_dir = next(p for p in (tmp_path / "build").glob("pbmc-*") if p.is_dir())
    card = yaml.safe_load((model_dir / "MLmodel").read_text())["metadata"]
    assert run.info.status == "FINISHED" and run.data.params["recipe"] == "pbmc.yaml"
    assert run.data.tags["cellzoo.version"] == card["version"]
    kang = next(q for q in card["metrics"]["cross_study"] if "kang" in q["file"])
    assert run.data.metrics["cross_study.kang2018_pbmc.ontology_accuracy"] == kang["ontology_accuracy"]
    assert {"model/MLmodel", "recipe/pbmc.yaml"} <= {
        f.path for d in ("model", "recipe") for f in client.list_artifacts(run.info.run_id, d)
    }

    client.set_registered_model_alias("labpbmc", "champion", version.version)
    out = tmp_path / "out.h5ad"
    done = run_cli(
        "annotate", str(example_copy), "-m", "models:/labpbmc@champion", "-o", str(out), "--tracking-uri", uri
    )
    assert done.returncode == 0, done.stderr
    recorded = ad.read_h5ad(out).uns["pbmc"]["model"]
    assert recorded["reference"] == "models:/labpbmc@champion"
    assert recorded["url"] == f"models:/labpbmc/{version.version}" and recorded["registry_version"] == version.version
