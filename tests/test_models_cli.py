"""`cellzoo models list|show` read the zoo's registry; the pinned reference they print resolves."""

from __future__ import annotations

import anndata as ad
import numpy as np

from runner.registry import load_registry
from tests.conftest import run_cli


def test_models_list_shows_the_zoo_and_cache_state(example_copy, tmp_path):
    listed = run_cli("cellzoo", "models", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["name", "default", "family", "species", "tissue", "cached"]
    pbmc = next(r.split() for r in rows if r.startswith("pbmc "))
    assert pbmc == ["pbmc", "1.0.0", "linear", "human", "blood", "no"]
    assert run_cli("annotate", str(example_copy), "-m", "pbmc", "-o", str(tmp_path / "o.h5ad"), "-q").returncode == 0
    assert "yes" in next(r for r in run_cli("cellzoo", "models", "list").stdout.splitlines() if r.startswith("pbmc "))


def test_models_show_prints_the_entry_and_the_reference_to_cite(example_copy, tmp_path):
    entry = load_registry().get("pbmc")
    shown = run_cli("cellzoo", "models", "show", "pbmc@1.0.0")
    assert shown.returncode == 0, shown.stderr
    assert f"sha256      {entry.sha256}" in shown.stdout
    cite = next(line.split(maxsplit=1)[1] for line in shown.stdout.splitlines() if line.startswith("cite"))
    assert cite == f"{entry.url}#sha256={entry.sha256}"
    # once cached, the card is shown too
    assert run_cli("annotate", str(example_copy), "-m", "pbmc", "-o", str(tmp_path / "o.h5ad"), "-q").returncode == 0
    assert "# Model card: pbmc 1.0.0" in run_cli("cellzoo", "models", "show", "pbmc").stdout
    # the cited string gives the same predictions as the name
    by_pin = run_cli("annotate", str(example_copy), "-m", cite, "-o", str(tmp_path / "pin.h5ad"), "-q")
    assert by_pin.returncode == 0, by_pin.stderr
    a, b = ad.read_h5ad(tmp_path / "o.h5ad"), ad.read_h5ad(tmp_path / "pin.h5ad")
    assert (a.obs["pbmc_predicted"] == b.obs["pbmc_predicted"]).all()
    np.testing.assert_array_equal(a.obsm["pbmc_probabilities"], b.obsm["pbmc_probabilities"])
    assert b.uns["pbmc"]["model"]["sha256"] == entry.sha256


def test_models_show_unknown_name_is_bad_usage():
    done = run_cli("cellzoo", "models", "show", "pbcm")
    assert done.returncode == 2 and "Did you mean 'pbmc'" in done.stderr
