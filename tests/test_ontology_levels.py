"""Answers at every level of the Cell Ontology, back-off and harmonised labels: the rules a user relies on,
on hand-made probabilities (mechanics) and on real cells (the zoo's pbmc model on Kang 2018)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from model_zoo.harmonise import DROPPED_COARSE, DROPPED_RARE, cap_and_fill, harmonise
from model_zoo.metrics import ontology_match
from model_zoo.ontology import NOVEL, UNASSIGNED, answers, class_hierarchy, level_answers, term_lineage
from tests.conftest import annotate_file, data_file, truth_terms

PBMC = {"B": "CL:0000236", "MNP": "CL:0000113", "NK": "CL:0000623", "T_CD4": "CL:0000624", "T_CD8": "CL:0000625"}
CLASSES = np.array(sorted(PBMC))


@pytest.fixture(scope="module")
def hierarchy() -> dict:
    return class_hierarchy(list(CLASSES), PBMC)


def probs(**by_class: float) -> np.ndarray:
    return np.array([[by_class.get(c, 0.0) for c in CLASSES]])


def answer(hierarchy, p: np.ndarray, novel: bool = False, backoff: bool = True):
    names, ids, _, kind = answers(
        p, CLASSES, PBMC, hierarchy, min_probability=0.5, novel=np.array([novel]), backoff=backoff
    )
    return names[0], ids[0], kind[0]


def test_levels_come_from_the_documented_table(hierarchy):
    assert hierarchy["levels"]["compartment"]["names"] == ["immune"]
    lineage = hierarchy["levels"]["lineage"]
    by_class = {c: lineage["names"][g] for c, g in zip(CLASSES, lineage["class_group"], strict=True)}
    assert by_class == {
        "B": "B cell lineage",
        "MNP": "mononuclear phagocyte",
        "NK": "natural killer cell",
        "T_CD4": "T cell",
        "T_CD8": "T cell",
    }


def test_a_split_between_related_classes_backs_off_to_their_common_ancestor(hierarchy):
    name, term, kind = answer(hierarchy, probs(T_CD4=0.45, T_CD8=0.45, NK=0.1))
    assert (name, term, kind) == ("mature alpha-beta T cell", "CL:0000791", "coarser")
    assert term in term_lineage("CL:0000624") and term in term_lineage("CL:0000625")
    # without back-off the same cell is Unassigned; a sure cell keeps its class either way
    assert answer(hierarchy, probs(T_CD4=0.45, T_CD8=0.45, NK=0.1), backoff=False)[0] == UNASSIGNED
    assert answer(hierarchy, probs(T_CD4=0.8, T_CD8=0.2)) == ("T_CD4", "CL:0000624", "finest")


def test_back_off_never_goes_above_the_lineage_and_novel_cells_stay_unassigned(hierarchy):
    # B vs MNP share only 'leukocyte': coarser than any lineage, so no answer
    assert answer(hierarchy, probs(B=0.49, MNP=0.49, NK=0.02))[0] == UNASSIGNED
    assert answer(hierarchy, probs(T_CD4=0.9, T_CD8=0.1), novel=True) == (UNASSIGNED, "", NOVEL)


def test_each_level_is_the_group_with_the_largest_summed_probability(hierarchy):
    levels = level_answers(
        np.vstack([probs(T_CD4=0.3, T_CD8=0.3, NK=0.4), probs(B=0.4, MNP=0.6)]),
        hierarchy,
        min_probability=0.5,
        novel=np.array([False, True]),
    )
    assert list(levels["lineage"][0]) == ["T cell", UNASSIGNED] and levels["lineage"][1][0] == "CL:0000084"
    assert list(levels["compartment"][0]) == ["immune", UNASSIGNED]


def test_harmonise_trains_a_type_at_the_depth_every_study_supports():
    cd4, memory, naive = "CL:0000624", "CL:0000897", "CL:0000895"
    smc, bronchial, vascular = "CL:0000192", "CL:0002598", "CL:0000359"
    terms = np.array(
        [cd4] * 20 + [memory] * 30 + [naive] * 20 + [smc] * 2 + [bronchial] * 20 + [vascular] * 12 + ["CL:0000097"] * 5
    )
    sources = np.array(["a"] * 20 + ["b"] * 50 + ["a"] * 2 + ["b"] * 32 + ["b"] * 5)
    mapped, report = harmonise(terms, sources, min_cells=10, coarse_share=0.1)
    fate = {r["ontology_term_id"]: r["fate"] for r in report}
    assert set(mapped[:70]) == {cd4}  # memory and naive CD4 T cells rolled up: study a cannot tell them apart
    assert fate[memory].startswith("rolled up to CL:0000624") and fate[cd4] == "class"
    assert fate[smc] == DROPPED_COARSE and set(mapped[70:72]) == {""}  # 2 coarse cells do not erase 32 fine ones
    assert set(mapped[72:104]) == {bronchial, vascular}
    assert fate["CL:0000097"] == DROPPED_RARE and set(mapped[104:]) == {""}
    assert report[0]["cells"] and all("fate" in r for r in report)


def test_cap_and_fill_draws_evenly_from_the_sources_and_fills_from_the_larger():
    labels = np.array(["x"] * 100 + ["y"] * 10)
    sources = np.array(["a"] * 90 + ["b"] * 10 + ["a"] * 10)
    chosen = cap_and_fill(labels, sources, cap=40, seed=0)
    x = chosen[labels[chosen] == "x"]
    assert len(x) == 40 and (sources[x] == "b").sum() == 10 and (sources[x] == "a").sum() == 30  # b gives all it has
    assert (labels[chosen] == "y").sum() == 10 and len(set(chosen)) == len(chosen)


@pytest.mark.slow
def test_back_off_turns_wrong_fine_answers_into_right_coarser_ones_on_kang(tmp_path):
    """Kang 2018 through the zoo's pbmc: cells split between CD4 and CD8 T cells answer 'mature alpha-beta T
    cell' (right for both) instead of a coin flip; back-off adds right answers and never a wrong one."""
    query = data_file("pbmc/kang2018_pbmc.h5ad")
    runs = {}
    for backoff in (True, False):
        out = tmp_path / f"backoff-{backoff}.h5ad"
        annotate_file(query, "pbmc", output=out, key_added="k", backoff=backoff)
        runs[backoff] = ad.read_h5ad(out)
    truth = truth_terms("pbmc/kang2018_pbmc.h5ad", runs[True].obs["cluster_id"])

    def right(adata) -> np.ndarray:
        ids = adata.obs["k_ontology_term_id"].astype(str).to_numpy()
        return np.array([ontology_match(p, t) for p, t in zip(ids, truth, strict=True)])

    with_backoff, without = right(runs[True]), right(runs[False])
    coarser = runs[True].obs["k_answer_kind"].astype(str).to_numpy() == "coarser"
    assert coarser.sum() > 0 and with_backoff.sum() > without.sum()
    assert not (without & ~with_backoff).any()  # nothing right becomes wrong
    t_cells = np.isin(truth, ["CL:0000624", "CL:0000625"])
    assert with_backoff[coarser & t_cells].mean() >= 0.9
    # the finest guess stays available behind the answer
    assert (runs[True].obs["k_finest"].astype(str) == runs[False].obs["k_finest"].astype(str)).all()


def test_a_key_that_would_write_a_cellxgene_schema_column_is_refused():
    from runner.errors import UsageError
    from runner.keys import ResultKeys

    with pytest.raises(UsageError, match="cell_type_cellzoo"):
        ResultKeys("cell_type")
    assert ResultKeys("celltype").ontology_term_id == "celltype_ontology_term_id"
