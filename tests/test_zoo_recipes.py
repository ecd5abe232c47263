"""Recipes that cannot be built here, references that are not raw counts, several reference files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from model_zoo.build import BuildError, read_labelled, read_reference
from tests.conftest import run_cli


def test_annotate_with_the_unbuilt_hlca_recipe_says_how_to_build_it(example_copy):
    done = run_cli("annotate", str(example_copy), "-m", "lung-hlca")
    assert done.returncode == 2
    message = done.stderr
    assert "has not been built" in message and "cellzoo build lung-hlca --reference hlca_core.h5ad" in message
    assert "cellxgene.cziscience.com/collections/" in message and "-m build/lung-hlca-1.0.0" in message
    assert "Traceback" not in message


def _log_counts_file(path, *, invertible: bool) -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(40, 30)).astype(np.float64)
    factors = counts.sum(axis=1) / counts.sum(axis=1).mean()
    logged = (
        np.log2(counts / factors[:, None] + 1) if invertible else np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    )
    obs = pd.DataFrame({"label": ["a", "b"] * 20, "sizeFactor": factors}, index=[f"c{i}" for i in range(40)])
    ad.AnnData(sp.csr_matrix(logged.astype(np.float32)), obs=obs).write_h5ad(path)
    return counts


def test_log_counts_are_undone_only_when_exactly_invertible(tmp_path):
    spec = {"undo_log": {"base": 2, "size_factor_column": "sizeFactor"}}
    counts = _log_counts_file(tmp_path / "ok.h5ad", invertible=True)
    read = read_labelled(tmp_path / "ok.h5ad", "label", None, spec)
    np.testing.assert_array_equal(read.counts.toarray(), counts)
    _log_counts_file(tmp_path / "cp10k.h5ad", invertible=False)
    with pytest.raises(BuildError, match="not exactly invertible"):
        read_labelled(tmp_path / "cp10k.h5ad", "label", None, spec)
    with pytest.raises(BuildError, match="does not hold raw counts"):
        read_labelled(tmp_path / "cp10k.h5ad", "label", None, {})


def test_several_reference_files_share_genes_and_batch_by_file(tmp_path):
    paths = []
    for i, genes in enumerate((["g1", "g2", "g3"], ["g3", "g1", "g4"])):
        obs = pd.DataFrame({"label": ["a", "b"]}, index=[f"f{i}c0", f"f{i}c1"])
        counts = sp.csr_matrix(np.arange(6, dtype=np.float32).reshape(2, 3) + 10 * i)
        ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(tmp_path / f"plate{i}.h5ad")
        paths.append(tmp_path / f"plate{i}.h5ad")
    reference, batch = read_reference(paths, {"label_column": "label"}, None)
    assert list(reference.genes) == ["g1", "g3"]
    np.testing.assert_array_equal(reference.counts.toarray(), [[0, 2], [3, 5], [11, 10], [14, 13]])
    assert list(batch) == ["plate0", "plate0", "plate1", "plate1"]


def test_families_provide_the_build_interface():
    """What `cellzoo build` expects of a family is declared in model_zoo/family.py and checked on load."""
    from model_zoo.family import FAMILIES, FamilyError, load_family

    mappings = {name: load_family(name).query_mapping for name in FAMILIES}
    assert mappings == {"linear": "per_cell", "xgboost": "per_cell", "scanvi": "whole_query"}
    assert all(load_family(name).uncertainty and load_family(name).stores for name in FAMILIES)
    with pytest.raises(FamilyError, match="unknown family 'forest'; families: linear"):
        load_family("forest")
