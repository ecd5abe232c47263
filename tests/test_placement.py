"""The exact k-nearest search and UMAP placement the zoo families run at prediction (model_zoo.placement)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from model_zoo.placement import NearestReference, UmapPlacement, faithfulness, place_on_umap
from tests.conftest import PBMC_ARCHIVE, ROOT, unpack_zoo_model


def brute_force(reference: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Every distance, sorted: the k smallest of each query cell."""
    d = np.linalg.norm(query[:, None, :].astype(np.float64) - reference[None, :, :], axis=2)
    return np.sort(d, axis=1)[:, :k]


@pytest.fixture(scope="module")
def pbmc_weights(tmp_path_factory):
    model = unpack_zoo_model(PBMC_ARCHIVE.stem, tmp_path_factory.mktemp("pbmc"))
    with np.load(model / "artifacts" / "weights.npz") as arrays:
        return arrays["reference_latent"], arrays["reference_umap"]


def test_search_is_exact_on_the_pbmc_reference(pbmc_weights):
    """Query cells near reference cells (the usual case) and far from all of them; 2,150 cells x 50 PCs."""
    latent, _ = pbmc_weights
    rng = np.random.default_rng(0)
    near = latent[rng.integers(0, len(latent), 3000)] + rng.normal(0, 0.5, (3000, latent.shape[1]))
    far = rng.normal(0, 30, (500, latent.shape[1]))
    query = np.vstack([near, far]).astype(np.float32)
    distances, indices = NearestReference(latent, 15).neighbours(query)
    np.testing.assert_allclose(distances, brute_force(latent, query, 15), rtol=1e-4, atol=1e-3)
    # the indices are the cells at those distances
    at = np.linalg.norm(latent[indices].astype(np.float64) - query[:, None, :], axis=2)
    np.testing.assert_allclose(at, distances, rtol=1e-4, atol=1e-3)
    assert (np.diff(distances, axis=1) >= 0).all()


@pytest.mark.parametrize("n_reference", [1, 7, 15, 16, 100, 241, 1000])
def test_search_is_exact_for_any_reference_size(n_reference):
    """Small references (fewer cells than k, fewer than k blocks of 16), sizes that leave blocks unfilled,
    and tied distances (every reference cell twice)."""
    rng = np.random.default_rng(n_reference)
    half = rng.normal(size=(max(1, n_reference // 2), 8))
    reference = np.vstack([half, half, rng.normal(size=(n_reference % 2, 8))])[:n_reference]
    query = rng.normal(size=(1500, 8))
    distances, indices = NearestReference(reference, 15).neighbours(query)
    k = min(15, n_reference)
    assert distances.shape == indices.shape == (1500, k)
    np.testing.assert_allclose(distances, brute_force(reference, query, k), rtol=1e-4, atol=1e-4)
    assert all(len(set(row)) == k for row in indices)  # k distinct reference cells


def test_a_cell_on_a_reference_cell_is_placed_on_its_umap_position(pbmc_weights):
    latent, umap = pbmc_weights
    placed = UmapPlacement(latent, umap, n_neighbors=15)(latent[:200])
    np.testing.assert_allclose(placed, umap[:200], atol=1e-3)


def two_clusters(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A reference of two labelled clusters, far apart in the model's space and on the map."""
    label = np.repeat([0, 1], 300)
    latent = rng.normal(0, 1, (600, 10)) + np.where(label == 0, 0.0, 6.0)[:, None]
    umap = rng.normal(0, 1, (600, 2)) + np.where(label == 0, -10.0, 10.0)[:, None]
    return latent, umap, label


def test_a_cell_between_two_clusters_is_placed_in_its_labels_cluster():
    """ingest's mean puts cells whose neighbours span two clusters in the empty space between them; the
    labelled placement puts each beside reference cells of its predicted label, never in the void."""
    rng = np.random.default_rng(0)
    latent, umap, label = two_clusters(rng)
    query = rng.normal(0, 1, (400, 10)) + 3.0  # halfway: neighbours from both clusters
    predicted = rng.integers(0, 2, 400)
    placement = UmapPlacement(latent, umap, label)
    distances, indices = placement.neighbours(query)
    old = faithfulness(umap, label, place_on_umap(umap, distances, indices), predicted)
    new = faithfulness(umap, label, placement(query, predicted), predicted)
    assert old["in_void"] > 0.3
    assert new == {"label_agreement": 1.0, "in_void": 0.0}


def test_a_cell_none_of_whose_neighbours_has_its_label_goes_to_the_nearest_cell_of_it():
    rng = np.random.default_rng(1)
    latent, umap, label = two_clusters(rng)
    query = latent[:5] + 0.01  # deep in cluster 0, predicted 1
    placed = UmapPlacement(latent, umap, label)(query, np.ones(5, dtype=int))
    assert (placed[:, 0] > 5).all()  # cluster 1's side of the map
    assert faithfulness(umap, label, placed, np.ones(5))["label_agreement"] == 1.0


def test_a_model_without_reference_labels_places_as_before(pbmc_weights):
    latent, umap = pbmc_weights
    placement = UmapPlacement(latent, umap)
    distances, indices = placement.neighbours(latent[:100] + 0.3)
    np.testing.assert_allclose(
        placement(latent[:100] + 0.3, np.zeros(100, dtype=int)), place_on_umap(umap, distances, indices)
    )


def test_predicting_with_the_zoo_model_needs_no_scikit_learn(tmp_path):
    """Importing scikit-learn took 0.6 s of every run; the zoo's default pbmc predicts without it."""
    model = unpack_zoo_model(PBMC_ARCHIVE.stem, tmp_path / "pbmc")
    code = f"""
import sys, mlflow.pyfunc, numpy as np, scipy.sparse as sp
from runner.invoke import call_predict  # the runner's path: CSR counts in the model's gene order
model = mlflow.pyfunc.load_model({str(model)!r})
n_genes = len(open({str(model / "artifacts" / "genes.txt")!r}).read().split())
counts = sp.random(50, n_genes, density=0.3, format="csr", random_state=0) * 10
out = call_predict(model, counts.floor(), None)
assert len(out) == 50 and {{"umap:0", "umap:1"}} <= set(out.columns)
print(sorted(m for m in sys.modules if m.split(".")[0] == "sklearn"))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
