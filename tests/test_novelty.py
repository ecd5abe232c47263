"""Cells the model never saw come out `Unassigned` (novel), on real cells of other tissues and cell lines,
while cells like the reference's keep their answers."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from tests.conftest import annotate_file, data_file

pytestmark = pytest.mark.slow


def annotated(tmp_path, dataset: str, **options) -> ad.AnnData:
    out = tmp_path / "annotated.h5ad"
    annotate_file(data_file(dataset), "pbmc", output=out, key_added="k", overwrite=True, **options)
    return ad.read_h5ad(out)


LEUKOCYTE = "CL:0000738"  # the compartment level's immune group


@pytest.mark.parametrize(
    ("dataset", "term_column"),
    [
        ("lung/tabula_sapiens_lung.h5ad", "cell_type_ontology_term_id"),
        ("lung/travaglini2020_lung.h5ad", "cell_ontology_id"),
    ],
)
def test_lung_cells_through_the_blood_model_unassigned_unless_immune(tmp_path, dataset, term_column):
    """Lung cells of two studies through `pbmc`: epithelial, endothelial and stromal cells are of no lineage the
    model knows; the lung's immune cells are (macrophages, T cells, ...). Travaglini 2020's endothelial cells,
    which spend an ordinary share of their counts on the model's genes, passed as `MNP` (pbmc 1.4.0: 42% of its
    10x non-immune cells `Unassigned`); the shortfall on the answer's own markers finds them."""
    from model_zoo.ontology import level_term

    result = annotated(tmp_path, dataset)
    immune = np.array([level_term(str(t), "compartment") == LEUKOCYTE for t in result.obs[term_column]])
    unassigned = result.obs["k_predicted"].astype(str).to_numpy() == "Unassigned"
    novel = result.obs["k_answer_kind"].astype(str).to_numpy() == "novel"
    assert unassigned[~immune].mean() >= 0.9 and novel[~immune].mean() >= 0.85
    assert unassigned[immune].mean() <= 0.2
    assert np.median(result.obs["k_novelty"][~immune]) > 1.0 > np.median(result.obs["k_novelty"][immune])
    # the levels agree with the answer: a novel cell has no compartment either
    assert (result.obs["k_compartment"].astype(str).to_numpy()[novel] == "Unassigned").all()


def test_cell_lines_through_the_blood_model_are_novel_and_the_threshold_is_the_users(tmp_path):
    result = annotated(tmp_path, "lung_cell_lines/cellbench_dropseq_3cl.h5ad")
    assert (result.obs["k_answer_kind"].astype(str) == "novel").mean() >= 0.95
    off = annotated(tmp_path, "lung_cell_lines/cellbench_dropseq_3cl.h5ad", novelty_threshold=float("inf"))
    assert (off.obs["k_answer_kind"].astype(str) == "novel").sum() == 0  # inf: the check is off
    np.testing.assert_allclose(off.obs["k_novelty"], result.obs["k_novelty"])  # the score is written either way
    assert off.uns["k"]["params"]["novelty_threshold"] == float("inf")


def test_blood_cells_of_another_study_are_rarely_novel(tmp_path):
    result = annotated(tmp_path, "pbmc/kang2018_pbmc.h5ad")
    assert (result.obs["k_answer_kind"].astype(str) == "novel").mean() <= 0.05
