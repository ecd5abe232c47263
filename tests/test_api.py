"""The Python API: ``cellzoo.annotate(adata, "pbmc")`` in a notebook writes what ``annotate`` writes to a file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import cellzoo
from runner.errors import InputError, OutputError, UsageError
from runner.genes import n_found
from runner.keys import ResultKeys
from tests.conftest import EXAMPLE, KANG, ROOT, data_file, ontology_accuracy_of, run_cli

FLOOR = 0.80  # ontology-level accuracy a broken or panel-blind model does not reach on Kang (tests/test_pbmc_real.py)


@pytest.fixture(scope="module")
def kang() -> ad.AnnData:
    return ad.read_h5ad(data_file(KANG))


@pytest.fixture(scope="module")
def kang_annotated(kang) -> ad.AnnData:
    return cellzoo.annotate(kang, "pbmc", copy=True)


def test_import_is_cheap():
    """``import cellzoo`` loads none of the heavy libraries; they come with the first call."""
    code = "import sys, cellzoo; print(sorted(m for m in ('anndata', 'numpy', 'pandas', 'mlflow') if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
    assert cellzoo.__version__ and callable(cellzoo.annotate) and "copy" in cellzoo.annotate.__doc__


@pytest.mark.slow
def test_api_and_cli_write_the_same_labels_keys_and_provenance(kang, kang_annotated, tmp_path):
    out = tmp_path / "kang.h5ad"
    done = run_cli("annotate", str(data_file(KANG)), "-m", "pbmc", "-o", str(out), "-q")
    assert done.returncode == 0, done.stderr
    from_file = ad.read_h5ad(out)
    keys = ResultKeys("pbmc")
    assert (kang_annotated.obs[keys.predicted] == from_file.obs[keys.predicted]).all()
    np.testing.assert_allclose(kang_annotated.obs[keys.uncertainty], from_file.obs[keys.uncertainty], atol=1e-6)
    for key in keys.obsm_keys():
        np.testing.assert_allclose(np.asarray(kang_annotated.obsm[key]), np.asarray(from_file.obsm[key]), atol=1e-6)
    new_obs = set(kang_annotated.obs.columns) - set(kang.obs.columns)
    written = set(keys.obs_keys()) - set(keys.voting_keys())  # all but the vote's (asked for with majority_voting)
    assert new_obs == set(from_file.obs.columns) - set(kang.obs.columns) == written
    assert set(kang_annotated.obsm) == set(from_file.obsm)
    api, cli = kang_annotated.uns["pbmc"], from_file.uns["pbmc"]
    assert set(api) == set(cli) and set(api["params"]) == set(cli["params"])
    for part in ("model", "gene_overlap", "cells"):
        assert api[part] == cli[part], part
    assert api["input"] == "" and cli["input"] == "kang2018_pbmc.h5ad"
    assert api["params"]["read_options"] == cli["params"]["read_options"] == ""
    assert not api["params"]["streamed"]


@pytest.mark.slow
def test_kang_gene_names_come_from_the_symbol_column(kang, kang_annotated):
    """Kang's var_names carry 91 names made unique with their Ensembl id (SYMBOL_ENSG...); its var['SYMBOL']
    matches every model gene the study measured, and the finest labels are better for it."""
    model = cellzoo.load_model("pbmc")
    overlap = kang_annotated.uns["pbmc"]["gene_overlap"]
    params = kang_annotated.uns["pbmc"]["params"]
    assert params["gene_names"] == "var['SYMBOL']"
    assert overlap["present"] == n_found(np.array(model.genes), kang.var["SYMBOL"])
    assert overlap["present"] > n_found(np.array(model.genes), kang.var_names)
    as_named = cellzoo.annotate(kang, model, gene_column="var_names", copy=True)
    assert as_named.uns["pbmc"]["gene_overlap"]["present"] < overlap["present"]
    # the finest guesses are better for it (the answers also flag more interferon-stimulated monocytes as novel)
    chosen = ontology_accuracy_of(kang_annotated, KANG, "cluster_id", key="pbmc_finest")
    assert chosen >= FLOOR and chosen > ontology_accuracy_of(as_named, KANG, "cluster_id", key="pbmc_finest")


@pytest.mark.slow
def test_copy_convention_and_nothing_written_on_failure(kang):
    adata = kang.copy()
    assert cellzoo.annotate(adata, "pbmc", key_added="zoo", batch_size=500) is None
    assert "zoo_predicted" in adata.obs and "X_zoo_umap" in adata.obsm and adata.uns["zoo"]["params"]["batch_size"]
    with pytest.raises(OutputError, match="already has obs\\['zoo_predicted'\\]"):
        cellzoo.annotate(adata, "pbmc", key_added="zoo")
    assert cellzoo.annotate(adata, "pbmc", key_added="zoo", overwrite=True, copy=True) is not adata
    before = (list(adata.obs.columns), list(adata.obsm), list(adata.uns))
    with pytest.raises(InputError, match="at least 99% are needed"):
        cellzoo.annotate(adata, "pbmc", key_added="other", min_gene_overlap=0.99)
    assert (list(adata.obs.columns), list(adata.obsm), list(adata.uns)) == before


def test_options_are_validated_in_one_place(kang):
    with pytest.raises(UsageError, match="--batch-size must be at least 1, got 0"):
        cellzoo.annotate(kang, "pbmc", batch_size=0)
    with pytest.raises(UsageError, match="did you mean 'batch_size'"):
        cellzoo.annotate(kang, "pbmc", batchsize=100)
    with pytest.raises(UsageError, match="--min-gene-overlap must be within \\[0, 1\\]"):
        cellzoo.CheckOptions(min_gene_overlap=1.5)
    with pytest.raises(UsageError, match="did you mean 'uv'"):
        cellzoo.RunOptions(env_manager="uvv")
    assert cellzoo.CheckOptions(counts_layer="counts", species_map=True).cli_args() == [
        "--counts-layer counts",
        "--species-map",
    ]


def test_models_listed_loaded_and_described():
    models = cellzoo.list_models()
    assert {"pbmc", "pbmc-scanvi", "lung-cell-lines"} <= set(models.index)
    assert models.loc["pbmc", "family"] == "linear"
    model = cellzoo.load_model("pbmc")
    assert model.name == "pbmc" and model.version == models.loc["pbmc", "version"]
    assert model.labels["B"] == "CL:0000236" and len(model.genes) == model.metadata["n_genes"]
    assert "pbmc" in repr(model) and cellzoo.resolve_model("pbmc").sha256 == model.resolved.sha256


def test_version_on_both_commands():
    for program in ("annotate", "cellzoo"):
        done = run_cli(program, "--version")
        assert done.returncode == 0 and done.stdout.strip() == f"cellzoo {cellzoo.__version__}", done.stderr


@pytest.mark.slow
def test_library_log_lines_go_to_stderr_and_quiet_silences_them(kang, tmp_path):
    """scvi-tools logs through rich to stdout and lightning through its own handlers: none of it reaches the
    summary on stdout, and -q leaves only warnings."""
    path = tmp_path / "kang300.h5ad"
    kang[:300].copy().write_h5ad(path)
    out = tmp_path / "out.h5ad"
    done = run_cli("annotate", str(path), "-m", "pbmc-scanvi", "-o", str(out))
    assert done.returncode == 0, done.stderr
    summary = {line.split()[0] for line in done.stdout.splitlines() if line and not line.startswith(" ")}
    assert summary == {"model", "cells", "counts", "genes", "labels", "uncertainty", "environment", "output"}
    assert "Training for" in done.stderr  # scvi-tools' own log line, on stderr
    quiet = run_cli("annotate", str(path), "-m", "pbmc-scanvi", "-o", str(out), "--overwrite", "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.splitlines()[:4] == done.stdout.splitlines()[:4]  # the summary, as without -q
    assert "Training for" not in quiet.stderr and "GPU available" not in quiet.stderr


def test_two_versions_in_one_process_each_run_the_code_they_carry(tmp_path):
    """Every zoo model carries the ``model_zoo`` code it was built with. A notebook that compares two versions
    of a model, after importing the repository's ``model_zoo`` (as one that builds models does), must run each
    with its own code: its answers equal those of the same version annotated alone, in a fresh process."""
    import model_zoo.novelty  # noqa: F401  the repository's copy, imported first

    example = ad.read_h5ad(EXAMPLE)
    for version in ("1.3.0", "1.4.0"):
        model = cellzoo.load_model(f"pbmc@{version}")
        annotator = model.pyfunc()._model_impl.python_model
        assert Path(type(annotator).predict.__code__.co_filename).is_relative_to(model.path)
        in_process = cellzoo.annotate(example, model, copy=True, key_added="k")
        out = tmp_path / f"alone-{version}.h5ad"
        done = run_cli("annotate", str(EXAMPLE), "-m", f"pbmc@{version}", "-o", str(out), "--key-added", "k")
        assert done.returncode == 0, done.stderr
        alone = ad.read_h5ad(out)
        np.testing.assert_allclose(in_process.obs["k_novelty"], alone.obs["k_novelty"], rtol=1e-5)
        assert (in_process.obs["k_predicted"].astype(str) == alone.obs["k_predicted"].astype(str)).all()
