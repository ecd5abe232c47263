"""The cache commands, and reproducing a run from the pinned reference that `models show` prints."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from tests.conftest import PBMC_ARCHIVE, PBMC_VERSION, assert_cache_clean, run_cli, sha256

PBMC_SHA = sha256(PBMC_ARCHIVE)


def test_pull_verify_evict_rm_and_clean(model_cache):
    assert run_cli("cellzoo", "cache", "dir").stdout.strip() == str(model_cache)
    pulled = run_cli("cellzoo", "models", "pull", "pbmc")
    assert pulled.returncode == 0 and PBMC_SHA in pulled.stdout, pulled.stderr
    listed = run_cli("cellzoo", "models", "list")
    rows = {row.split()[0]: row.split() for row in listed.stdout.splitlines()[1:]}
    assert rows["pbmc"] == ["pbmc", PBMC_VERSION, "human", "blood", "linear", "yes"]
    assert rows["lung-cell-lines"][-1] == "no"  # only what was pulled is cached
    ok = run_cli("cellzoo", "models", "verify")
    assert ok.returncode == 0 and f"ok      {PBMC_SHA}" in ok.stdout
    labels = model_cache / "models" / PBMC_SHA / "artifacts" / "labels.json"
    labels.write_text(labels.read_text().replace("B", "X"))
    tampered = run_cli("cellzoo", "models", "verify")
    assert tampered.returncode == 1 and "artifacts/labels.json differs from the archive; evicted" in tampered.stdout
    assert_cache_clean(model_cache)
    assert run_cli("cellzoo", "models", "pull", "pbmc").returncode == 0
    (model_cache / "archives" / f"{PBMC_SHA}.zip").write_bytes(b"not the archive")
    broken = run_cli("cellzoo", "models", "verify")
    assert broken.returncode == 1 and "its archive hashes to" in broken.stdout
    assert_cache_clean(model_cache)
    assert run_cli("cellzoo", "models", "pull", "pbmc").returncode == 0
    removed = run_cli("cellzoo", "models", "rm", "pbmc")
    assert removed.returncode == 0 and f"removed  pbmc  {PBMC_SHA}" in removed.stdout
    assert_cache_clean(model_cache)
    assert run_cli("cellzoo", "models", "pull", "pbmc").returncode == 0
    assert run_cli("cellzoo", "models", "rm", PBMC_SHA[:12]).stdout.startswith("removed")
    assert run_cli("cellzoo", "models", "pull", "pbmc").returncode == 0
    held = sum(p.stat().st_size for p in model_cache.rglob("*") if p.is_file())
    cleaned = run_cli("cellzoo", "cache", "clean")
    assert cleaned.returncode == 0 and f"removed {held / 1e6:.1f} MB" in cleaned.stdout
    assert_cache_clean(model_cache)


@pytest.mark.slow
def test_pinned_reference_from_show_reproduces_the_named_run(example_copy, tmp_path, model_cache):
    shown = run_cli("cellzoo", "models", "show", "pbmc")
    pinned = next(line.split()[1] for line in shown.stdout.splitlines() if line.startswith("pinned"))
    results = []
    for i, ref in enumerate(("pbmc", pinned)):
        out = tmp_path / f"run{i}.h5ad"
        done = run_cli("annotate", str(example_copy), "-m", ref, "-o", str(out), "--offline")
        assert done.returncode == 0, done.stderr
        results.append(ad.read_h5ad(out))
    by_name, by_pin = results
    assert by_pin.uns["pbmc"]["model"]["reference"] == pinned
    for field in ("url", "sha256", "version"):
        assert by_name.uns["pbmc"]["model"][field] == by_pin.uns["pbmc"]["model"][field]
    assert by_name.uns["pbmc"]["model"]["sha256"] == PBMC_SHA
    pd.testing.assert_series_equal(by_name.obs["pbmc_predicted"], by_pin.obs["pbmc_predicted"])
    np.testing.assert_array_equal(by_name.obsm["pbmc_probabilities"], by_pin.obsm["pbmc_probabilities"])
    np.testing.assert_array_equal(by_name.obsm["X_pbmc_umap"], by_pin.obsm["X_pbmc_umap"])
    # loading the model (which writes bytecode beside its code) leaves the cache verifiable
    assert run_cli("cellzoo", "models", "verify").returncode == 0
