"""What a user relies on after `annotate`: every key written, readable, plottable, reproducible."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from runner.registry import load_registry
from tests.conftest import run_cli, sha256

matplotlib.use("Agg")


@pytest.fixture
def annotated(example_copy, tmp_path):
    out = tmp_path / "annotated.h5ad"
    before = sha256(example_copy)
    done = run_cli("annotate", str(example_copy), "-m", "pbmc", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert sha256(example_copy) == before
    return out, done


def test_every_key_survives_write_and_read(annotated, example_copy):
    out, done = annotated
    adata = ad.read_h5ad(out)
    query = ad.read_h5ad(example_copy)
    assert adata.n_obs == query.n_obs == 559
    assert (adata.X != query.X).nnz == 0  # the matrix as read is kept
    predicted = adata.obs["pbmc_predicted"]
    assert isinstance(predicted.dtype, pd.CategoricalDtype)
    assert set(predicted.cat.categories) == set(predicted.unique())  # no unused categories
    unc = adata.obs["pbmc_uncertainty"].to_numpy()
    assert ((unc >= 0) & (unc <= 1)).all()
    kind = adata.obs["pbmc_answer_kind"].astype(str).to_numpy()
    finest = adata.obs["pbmc_finest"].astype(str).to_numpy()
    assert (predicted[kind == "finest"].astype(str) == finest[kind == "finest"]).all() and (
        unc[kind == "finest"] <= 0.5
    ).all()
    assert (predicted[np.isin(kind, ["uncertain", "novel"])] == "Unassigned").all()
    assert (unc[kind == "coarser"] > 0.5).all() and set(finest) <= {"B", "MNP", "NK", "T_CD4", "T_CD8"}
    assigned = predicted != "Unassigned"
    assert adata.obs["pbmc_ontology_term_id"][assigned].str.startswith("CL:").all()
    assert (adata.obs["pbmc_compartment"][assigned] == "immune").all()  # every class of the model is immune
    assert (adata.obs["pbmc_novelty"] >= 0).all()
    probs = adata.obsm["pbmc_probabilities"]  # a plain array, as CELLxGENE and cellxgene-schema need
    assert isinstance(probs, np.ndarray) and probs.shape == (559, 5)
    assert list(adata.uns["pbmc"]["classes"]) == ["B", "MNP", "NK", "T_CD4", "T_CD8"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(1 - probs.max(axis=1), unc, atol=1e-5)
    assert adata.obsm["X_pbmc"].shape == (559, 50) and adata.obsm["X_pbmc_umap"].shape == (559, 2)
    assert np.isfinite(adata.obsm["X_pbmc_umap"]).all()
    prov = adata.uns["pbmc"]
    entry = load_registry().get("pbmc")
    assert prov["model"]["sha256"] == entry.sha256 and prov["model"]["version"] == entry.version
    assert prov["gene_overlap"]["model_genes"] >= prov["gene_overlap"]["present"] > 0
    assert prov["params"]["counts"] == "X" and prov["runner_version"]
    # the summary a user reads
    assert "cells       559" in done.stdout and str(out) in done.stdout and "MNP" in done.stdout


def test_output_opens_in_scanpy_and_plots(annotated, tmp_path):
    import scanpy as sc

    adata = sc.read_h5ad(annotated[0])
    fig = sc.pl.embedding(adata, basis="X_pbmc_umap", color="pbmc_predicted", show=False, return_fig=True)
    fig.savefig(tmp_path / "umap.png")
    assert (tmp_path / "umap.png").stat().st_size > 10_000


def test_existing_output_and_keys_need_overwrite(annotated, tmp_path):
    out, _ = annotated
    again = run_cli("annotate", str(out), "-m", "pbmc", "-o", str(out))  # output is the input
    assert again.returncode == 2 and "never modifies its input" in again.stderr
    second = tmp_path / "second.h5ad"
    refused = run_cli("annotate", str(out), "-m", "pbmc", "-o", str(second))
    assert refused.returncode == 1 and "--overwrite" in refused.stderr and not second.exists()
    other_key = run_cli("annotate", str(out), "-m", "pbmc", "-o", str(second), "--key-added", "pbmc2")
    assert other_key.returncode == 0, other_key.stderr
    both = ad.read_h5ad(second)
    assert {"pbmc_predicted", "pbmc2_predicted"} <= set(both.obs) and "X_pbmc2_umap" in both.obsm
    exists = run_cli("annotate", str(out), "-m", "pbmc", "-o", str(second), "--key-added", "pbmc2")
    assert exists.returncode == 2 and "exists" in exists.stderr
    forced = run_cli("annotate", str(out), "-m", "pbmc", "-o", str(second), "--overwrite")
    assert forced.returncode == 0, forced.stderr


def test_batches_stream_to_the_same_result(example_copy, tmp_path):
    outs = []
    for batch in ("10000", "97"):
        out = tmp_path / f"b{batch}.h5ad"
        assert (
            run_cli("annotate", str(example_copy), "-m", "pbmc", "-o", str(out), "--batch-size", batch).returncode == 0
        )
        outs.append(ad.read_h5ad(out))
    assert (outs[0].obs["pbmc_predicted"] == outs[1].obs["pbmc_predicted"]).all()
    np.testing.assert_allclose(outs[0].obsm["X_pbmc_umap"], outs[1].obsm["X_pbmc_umap"], atol=1e-5)


def test_pyfunc_takes_a_gene_column_dataframe_like_serve_sends(example_copy):
    """mlflow.pyfunc.load_model(...).predict(df) on gene columns equals the runner's CSR path."""
    import mlflow

    from model_zoo.novelty import TECHNICAL
    from runner.invoke import call_predict
    from runner.resolve import resolve_model_ref

    model_dir = resolve_model_ref("pbmc").path
    model = mlflow.pyfunc.load_model(str(model_dir))
    query = ad.read_h5ad(example_copy)
    genes = np.array((model_dir / "artifacts" / "genes.txt").read_text().split())
    shared = [g for g in genes if g in query.var_names]
    frame = pd.DataFrame(query[:, shared].X.toarray(), columns=shared)
    from_frame = model.predict(frame)  # MLflow's own path: the signature's columns
    csr = sp.csr_matrix(pd.DataFrame(frame).reindex(columns=genes, fill_value=0).to_numpy())
    totals = frame.loc[:, ~frame.columns.str.contains(TECHNICAL)].sum(axis=1).to_numpy()
    from_csr = call_predict(model, csr, {"genes_present": shared, "cell_totals": totals})  # the runner's path
    assert list(from_frame.columns[:3]) == ["label", "uncertainty", "ontology_term_id"]
    assert any(c.startswith("prob:") for c in from_frame) and "umap:1" in from_frame and "emb:49" in from_frame
    pd.testing.assert_frame_equal(from_frame, from_csr)


def test_overwrite_by_a_model_without_embedding_leaves_no_stale_one(pbmc_dir, kang_frame, tmp_path):
    """A rerun under the same key with --overwrite, by a model that writes no embedding or UMAP (a user's
    classifier): the earlier run's obsm entries go, in memory and in a streamed output alike."""
    import mlflow

    from runner.keys import ResultKeys
    from runner.write import streamed_output, write_results

    frame = mlflow.pyfunc.load_model(str(pbmc_dir)).predict(kang_frame.iloc[:200])
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith(("emb:", "umap:"))])
    result = ResultKeys("k")
    options = {"unassigned_threshold": 0.5, "provenance": {"model": {"name": "classifier"}}}
    stale = {result.embedding: np.ones((200, 3)), result.umap: np.ones((200, 2)), "X_mine": np.zeros((200, 2))}

    in_memory = ad.AnnData(obs=pd.DataFrame(index=kang_frame.index[:200]), obsm=stale)
    write_results(in_memory, frame, result, **options)
    assert set(in_memory.obsm) == {result.probabilities, "X_mine"}

    source, output = tmp_path / "earlier.h5ad", tmp_path / "out.h5ad"
    ad.AnnData(sp.csr_matrix((200, 5), dtype=np.float32), obs=in_memory.obs[[]], obsm=stale).write_h5ad(source)
    results = ad.AnnData(obs=in_memory.obs[[]])
    write_results(results, frame, result, **options)
    with streamed_output(source, output, owned=result.obsm_keys()) as write:
        write(results)
    assert set(ad.read_h5ad(output).obsm) == {result.probabilities, "X_mine"}
