"""Majority voting (`--majority-voting`): every over-cluster of the query takes its most frequent answer. On
real blood cells of another study that corrects isolated errors; clusters of cells the model never saw stay
`Unassigned`."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import cellzoo
from runner import voting
from runner.keys import ResultKeys
from tests.conftest import data_file, ontology_accuracy_of

pytestmark = pytest.mark.slow


def test_cluster_sizes_stay_within_their_bounds():
    for n in (1, 9, 10, 150, 1_556, 10_000, 250_000, 1_000_000, 5_000_000):
        k = voting.n_clusters(n)
        assert 1 <= k <= voting.MAX_CLUSTERS
        assert k == 1 or n / k >= voting.MIN_CLUSTER


def test_vote_takes_each_clusters_commonest_label():
    clusters = np.array([0, 0, 0, 1, 1, 2])
    labels = np.array(["T", "B", "T", "NK", "Unassigned", "B"], dtype=object)
    voted, share = voting.vote(clusters, labels)
    assert voted.tolist() == ["T", "T", "T", "NK", "NK", "B"]  # a tie: the first label in sorted order
    np.testing.assert_allclose(share, [2 / 3, 2 / 3, 2 / 3, 0.5, 0.5, 1.0])


def test_voting_corrects_blood_cells_of_another_study_and_is_reproducible():
    kang = ad.read_h5ad(data_file("pbmc/kang2018_pbmc.h5ad"))
    first = cellzoo.annotate(kang, "pbmc", key_added="k", majority_voting=True, copy=True)
    obs = first.obs
    per_cell = ontology_accuracy_of(first, "pbmc/kang2018_pbmc.h5ad", "cluster_id", key="k")
    voted = first.copy()
    voted.obs["k_ontology_term_id"] = obs["k_majority_voting_ontology_term_id"]
    by_vote = ontology_accuracy_of(voted, "pbmc/kang2018_pbmc.h5ad", "cluster_id", key="k")
    assert by_vote >= per_cell + 0.02  # measured: 0.846 -> 0.906
    commonest = obs.groupby("k_over_clustering", observed=True)["k_predicted"].agg(lambda s: s.value_counts().idxmax())
    assert (obs["k_majority_voting"].astype(str) == obs["k_over_clustering"].map(commonest).astype(str)).all()
    assert first.uns["k"]["majority_voting"]["clusters"] == obs["k_over_clustering"].nunique() > 10
    assert first.uns["k"]["params"]["majority_voting"] is True
    again = cellzoo.annotate(kang, "pbmc", key_added="k", majority_voting=True, copy=True)
    pd.testing.assert_series_equal(again.obs["k_over_clustering"], obs["k_over_clustering"])


def test_clusters_of_cells_the_model_never_saw_stay_unassigned():
    """Tabula Sapiens lung through `pbmc`: the epithelial, endothelial and stromal cells' clusters vote
    `Unassigned`; the lung's immune cells keep answers."""
    lung = ad.read_h5ad(data_file("lung/tabula_sapiens_lung.h5ad"))
    cellzoo.annotate(lung, "pbmc", key_added="k", majority_voting=True)
    immune = lung.obs["compartment"].astype(str).to_numpy() == "immune"
    unassigned = lung.obs["k_majority_voting"].astype(str).to_numpy() == "Unassigned"
    assert unassigned[~immune].mean() >= 0.9
    assert unassigned[immune].mean() <= 0.2
    assert (lung.obs.loc[unassigned, "k_majority_voting_ontology_term_id"].astype(str) == "").all()


def test_a_rerun_without_voting_leaves_no_stale_vote():
    kang = ad.read_h5ad(data_file("pbmc/kang2018_pbmc.h5ad"))[:300].copy()
    cellzoo.annotate(kang, "pbmc", key_added="k", majority_voting=True)
    assert "k_majority_voting" in kang.obs
    cellzoo.annotate(kang, "pbmc", key_added="k", overwrite=True)
    assert not set(ResultKeys("k").voting_keys()) & set(kang.obs)
    assert "majority_voting" not in kang.uns["k"]
