"""The zoo's `lung` model on real lung cells, and a panel-exact model built for a targeted gene panel."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import yaml

from model_zoo.build import read_gene_list
from model_zoo.metrics import ontology_match
from model_zoo.ontology import class_hierarchy
from tests.conftest import ROOT, annotate_file, data_file, run_cli

pytestmark = pytest.mark.slow
TS, TRAVAGLINI = "lung/tabula_sapiens_lung.h5ad", "lung/travaglini2020_lung.h5ad"
PANEL = ROOT / "benchmarks" / "panels" / "lung-480.txt"


def level_of(terms: np.ndarray, level: str) -> np.ndarray:
    """Each Cell Ontology id's term at ``level`` (model_zoo/data/ontology_levels.csv), '' where it has none."""
    unique = sorted(set(map(str, terms)))
    spec = class_hierarchy(unique, dict(zip(unique, unique, strict=True)))["levels"][level]
    table = {
        t: spec["ontology_term_ids"][g] if g >= 0 else "" for t, g in zip(unique, spec["class_group"], strict=True)
    }
    return np.array([table[str(t)] for t in terms])


def test_lung_answers_real_cells_at_every_level(tmp_path):
    """Both studies' cells (the model's own references: these check the answers and levels fit together,
    the cross-study score is the benchmark's leave-one-study-out table)."""
    out = tmp_path / "annotated.h5ad"
    annotate_file(data_file(TS), "lung", output=out)
    result = ad.read_h5ad(out)
    truth = result.obs["cell_type_ontology_term_id"].astype(str).to_numpy()
    answer = result.obs["lung_ontology_term_id"].astype(str).to_numpy()
    assert np.mean([ontology_match(p, t) for p, t in zip(answer, truth, strict=True)]) >= 0.85
    for level in ("compartment", "lineage"):
        got = result.obs[f"lung_{level}_ontology_term_id"].astype(str).to_numpy()
        expected = level_of(truth, level)
        known = (expected != "") & (got != "")
        assert known.mean() >= 0.85 and np.mean(got[known] == expected[known]) >= 0.95
    # the study's own coarse "compartment" column agrees with the model's compartment
    compartment = result.obs["lung_compartment"].astype(str).to_numpy()
    assigned = compartment != "Unassigned"
    assert np.mean(compartment[assigned] == result.obs["compartment"].astype(str).to_numpy()[assigned]) >= 0.95
    card = yaml.safe_load((ROOT / "registry.yaml").read_text())["models"]["lung"]
    assert result.uns["lung"]["model"]["version"] == card["default"]
    assert result.uns["lung"]["model"]["sha256"] == card["versions"][card["default"]]["sha256"]


def test_panel_exact_model_trains_on_the_panel_and_annotates_a_panel_query(tmp_path):
    panel = read_gene_list(PANEL)
    query = ad.read_h5ad(data_file(TRAVAGLINI))
    query = query[:, query.var_names.isin(panel)].copy()
    panel_query = tmp_path / "panel_query.h5ad"
    query.write_h5ad(panel_query)
    build = ["build", "lung", "--reference", str(data_file(TS)), "--genes-from", str(panel_query)]
    done = run_cli("cellzoo", *build, "--out", str(tmp_path / "build"), "--timing-cells", "0", "-q")
    assert done.returncode == 0, done.stderr
    model_dir = next(p for p in (tmp_path / "build").iterdir() if p.is_dir())
    version = yaml.safe_load((ROOT / "model_zoo" / "recipes" / "lung.yaml").read_text())["version"]
    assert model_dir.name.startswith(f"lung-{version}+panel.")
    genes = (model_dir / "artifacts" / "genes.txt").read_text().split()
    assert set(genes) <= set(query.var_names)  # exactly the panel's genes, nothing it lacks
    meta = yaml.safe_load((model_dir / "MLmodel").read_text())["metadata"]
    assert meta["training_reference"]["panel"]["genes_used"] <= query.n_vars
    out = tmp_path / "annotated.h5ad"
    annotate_file(panel_query, str(model_dir), output=out, key_added="panel")
    result = ad.read_h5ad(out)
    assert result.uns["panel"]["gene_overlap"]["fraction"] == 1.0
    truth = level_of(result.obs["cell_ontology_id"].astype(str).to_numpy(), "lineage")
    got = result.obs["panel_lineage_ontology_term_id"].astype(str).to_numpy()
    assert np.mean(got[truth != ""] == truth[truth != ""]) >= 0.75
