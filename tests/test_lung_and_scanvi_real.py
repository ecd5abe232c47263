"""The new zoo models on real data: cell lines across technologies, scANVI reference mapping on Kang,
the xgboost family, and the `lung-hlca` recipe built end to end from a small real stand-in reference."""

from __future__ import annotations

import anndata as ad
import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from model_zoo.metrics import ontology_accuracy
from tests.conftest import ROOT, data_file, run_cli, truth_terms

pytestmark = pytest.mark.slow


def annotate(tmp_path, dataset: str, model: str, *options: str) -> ad.AnnData:
    out = tmp_path / "out.h5ad"
    done = run_cli("annotate", str(data_file(dataset)), "-m", model, "-o", str(out), "--key-added", "zoo", *options)
    assert done.returncode == 0, done.stderr
    return ad.read_h5ad(out)


def test_lung_cell_lines_transfers_to_dropseq(tmp_path):
    dataset = "lung_cell_lines/cellbench_dropseq_3cl.h5ad"
    result = annotate(tmp_path, dataset, "lung-cell-lines")
    truth = truth_terms(dataset, result.obs["cell_line"])
    predicted = result.obs["zoo_ontology_term_id"].astype(str).to_numpy()
    assert np.mean(predicted == truth) >= 0.9  # Cellosaurus ids: exact match
    assert ontology_accuracy(predicted, truth) >= 0.9
    assert set(result.uns["zoo"]["classes"]) == {"A549", "H1975", "H2228", "H838", "HCC827"}


def test_pbmc_scanvi_maps_kang_by_surgery(tmp_path):
    dataset = "pbmc/kang2018_pbmc.h5ad"
    result = annotate(tmp_path, dataset, "pbmc-scanvi")
    truth = truth_terms(dataset, result.obs["cluster_id"])
    accuracy = ontology_accuracy(result.obs["zoo_ontology_term_id"].astype(str).to_numpy(), truth)
    assert accuracy >= 0.80  # the floor of the linear family; zero-filled genes gave 0.74-0.77
    assert result.obsm["X_zoo"].shape == (result.n_obs, 10) and np.isfinite(result.obsm["X_zoo_umap"]).all()
    probs = result.obsm["zoo_probabilities"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(1 - probs.max(axis=1), result.obs["zoo_uncertainty"], atol=1e-5)
    assert result.uns["zoo"]["model"]["family"] == "scanvi"
    # one scArches surgery for the whole query: the labels do not depend on how it is read in blocks
    blocks = annotate(tmp_path, dataset, "pbmc-scanvi", "--batch-size", "400", "--overwrite")
    assert (blocks.obs["zoo_finest"].astype(str) == result.obs["zoo_finest"].astype(str)).all()
    np.testing.assert_allclose(blocks.obsm["X_zoo"], result.obsm["X_zoo"], atol=1e-4)


def test_xgboost_family_trains_saves_json_and_predicts(tmp_path):
    from model_zoo.build import read_labelled
    from model_zoo.xgboost import pyfunc, train

    reference = read_labelled(data_file("lung_cell_lines/cellbench_celseq2_5cl_p1.h5ad"), "cell_line")
    model, report = train.train(reference.counts, reference.genes, reference.labels, {"n_pcs": 20, "n_rounds": 100})
    assert report["held_out"]["accuracy"] >= 0.85
    labels = {c: {"ontology_term_id": c} for c in model.classes}
    pyfunc.save_model(tmp_path / "model", model, labels, {"name": "cells"})
    assert (tmp_path / "model" / "artifacts" / "booster.json").is_file()
    assert not any(p.suffix in {".pkl", ".pickle"} for p in (tmp_path / "model").rglob("*"))
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    query = ad.read_h5ad(data_file("lung_cell_lines/cellbench_dropseq_3cl.h5ad"))
    shared = [g for g in model.genes if g in query.var_names]
    out = loaded.predict(pd.DataFrame(query[:, shared].X.toarray(), columns=shared))
    assert np.mean(out["label"].to_numpy() == query.obs["cell_line"].astype(str).to_numpy()) >= 0.8
    assert {"uncertainty", "prob:A549", "emb:19", "umap:1"} <= set(out.columns)


@pytest.fixture
def cellxgene_standin(tmp_path) -> tuple[ad.AnnData, ad.AnnData]:
    """A small real reference shaped like a CELLxGENE h5ad (the HLCA core's layout), and held-out cells.

    OneK1K PBMC (Ensembl ids, 40 donors): raw counts in raw.X, log-normalised X, cell_type names and
    their Cell Ontology ids, a 'dataset' batch column (two donor groups).
    """
    source = ad.read_h5ad(data_file("pbmc/onek1k_pbmc.h5ad"))
    rng = np.random.default_rng(0)
    cells = rng.choice(source.n_obs, size=900, replace=False)
    adata = source[cells].copy()
    terms = truth_terms("pbmc/onek1k_pbmc.h5ad", adata.obs["cell_type"])
    names = {
        "CL:0000624": "CD4-positive, alpha-beta T cell",
        "CL:0000787": "memory B cell",
        "CL:0000860": "classical monocyte",
        "CL:0000875": "non-classical monocyte",
    }
    adata.obs = pd.DataFrame(
        {
            "cell_type": [names[t] for t in terms],
            "cell_type_ontology_term_id": terms,
            "dataset": np.where(np.arange(adata.n_obs) % 2 == 0, "donors_a", "donors_b"),
        },
        index=adata.obs_names,
    )
    adata.raw = adata.copy()
    normalised = sp.csr_matrix(adata.X, dtype=np.float32)
    normalised.data = np.log1p(normalised.data)
    adata.X = normalised
    return adata[:700].copy(), adata[700:].copy()


def test_lung_recipe_builds_end_to_end_from_a_cellxgene_standin(cellxgene_standin, tmp_path):
    reference, held = cellxgene_standin
    reference.write_h5ad(tmp_path / "hlca_core.h5ad")
    query = ad.AnnData(held.raw.X.copy(), obs=held.obs.copy(), var=held.raw.var.copy())
    query.write_h5ad(tmp_path / "query.h5ad")
    params = ["scvi_epochs=15", "scanvi_epochs=5", "query_epochs=5", "n_hvg=500"]
    done = run_cli(
        "cellzoo",
        "build",
        "lung-hlca",
        "--reference",
        str(tmp_path / "hlca_core.h5ad"),
        "--out",
        str(tmp_path / "build"),
        "--timing-cells",
        "0",
        *(a for p in params for a in ("--param", p)),
    )
    assert done.returncode == 0, done.stderr
    model_dir = tmp_path / "build" / "lung-hlca-1.0.0"
    meta = yaml.safe_load((model_dir / "MLmodel").read_text())["metadata"]
    assert meta["family"] == "scanvi" and meta["gene_id_type"] == "ensembl"
    assert meta["labels"]["memory B cell"]["ontology_term_id"] == "CL:0000787"
    assert meta["training_reference"]["batch"] == "dataset" and "raw.X" in meta["training_reference"]["counts"]
    assert "cellxgene.cziscience.com" in meta["training_reference"]["source_url"]
    assert (model_dir / "artifacts" / "scvi_model" / "model.pt").is_file()
    out = tmp_path / "annotated.h5ad"
    annotated = run_cli("annotate", str(tmp_path / "query.h5ad"), "-m", str(model_dir), "-o", str(out))
    assert annotated.returncode == 0, annotated.stderr
    result = ad.read_h5ad(out)
    accuracy = ontology_accuracy(
        result.obs["lung-hlca_ontology_term_id"].astype(str).to_numpy(),
        held.obs["cell_type_ontology_term_id"].to_numpy(),
    )
    assert accuracy >= 0.8


def test_scanvi_genes_can_be_the_highly_variable_ones_alone():
    """The lung-cell-lines recipe's `min_detection: null`: only the HVGs, not every well-detected gene
    (on those deep plates 30% detection kept 7,983 mostly ubiquitous genes: 0.70 on Drop-seq, 0.98 without)."""
    from model_zoo.scanvi.compute import select_genes

    counts = sp.csr_matrix(np.array([[1, 0, 3, 2], [2, 0, 0, 1], [1, 1, 0, 0]]))
    hvg = np.array([False, True, False, False])
    assert select_genes(counts, hvg, None).tolist() == [1]
    assert select_genes(counts, hvg, 0.6).tolist() == [0, 1, 3]  # genes in >= 60% of cells join the HVGs
    recipe = yaml.safe_load((ROOT / "model_zoo" / "recipes" / "lung-cell-lines.yaml").read_text())
    assert recipe["params"]["min_detection"] is None and recipe["params"]["n_hvg"] == 2000
