"""The novelty benchmark's pipeline on real data: cellzoo `linear` built from the lung cell-line recipe with
every line and without H2228, annotated on Drop-seq through the runner; the held-out line's cells must
score as less familiar than the others, and the tables render."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks import accuracy, novelty, novelty_limits
from tests.conftest import DATA, data_file

pytestmark = pytest.mark.slow
NOVELTY_FLOOR = 0.7  # OneK1K's CD4 T cells held out: 0.21 with one scale for the reference (pbmc 1.3.0's code)


def test_held_out_line_is_ranked_novel_and_tabulated(tmp_path):
    query = accuracy.LUNG.queries[0]
    data_file(query.file)
    task = dataclasses.replace(accuracy.LUNG, queries=(query,))
    everything = accuracy.load_reference(task, DATA)
    queries = [accuracy.load_query(query, DATA, everything)]
    skipped: list[str] = []
    full = novelty.full_runs({"lines": everything}, {"lines": queries}, tmp_path, {"lines": (novelty.LINEAR,)}, skipped)
    baselines = {key: novelty.abstains(out.predictions) for key, out in full.items()}
    held = accuracy.load_reference(task, DATA, "H2228")
    case = ("lines", held, queries, everything.terms["H2228"], "H2228")
    rows = novelty.loco([case], baselines, tmp_path, lambda _: (novelty.LINEAR,), skipped)

    assert not skipped
    (row,) = rows
    assert row["method"] == "cellzoo linear" and row["n_held"] == 65
    assert row["auroc_novelty"] > 0.5 and row["auroc_flag"] > 0.5  # the unseen line looks less familiar
    assert 0.0 <= row["held_unassigned"] <= row["held_not_wrong"] <= 1.0
    assert row["others_newly"] is not None and 0.0 <= row["others_newly"] <= row["others_flagged"]
    assert "| lines | CellBench Drop-seq | H2228 | 65 | cellzoo linear |" in novelty.loco_table(rows)
    assert "cellzoo linear" in novelty.loco_summary(rows)


def test_a_t_cell_subtype_the_reference_lacks_stands_out_from_the_blood_cells_it_knows(tmp_path):
    """`pbmc` without its CD4 T cells, on OneK1K: the CD4 T cells lie among the CD8 T cells the model knows, and
    with one distance scale for the whole reference they looked more familiar than its monocytes (novelty AUROC
    0.21); measured against how tight the reference is where they land, they stand out. Their lineage, what
    `K_lineage` answers, is right."""
    query = next(q for q in accuracy.PBMC.queries if q.name == "OneK1K")
    task = dataclasses.replace(accuracy.PBMC, queries=(query,))
    without = accuracy.load_reference(task, DATA, "T_CD4")
    queries = [accuracy.load_query(query, DATA, without)]
    term = accuracy.load_reference(task, DATA).terms["T_CD4"]
    case = ("PBMC", without, queries, term, "T_CD4")
    skipped: list[str] = []
    (row,) = novelty.loco([case], {}, tmp_path, lambda _: (novelty.LINEAR,), skipped)
    assert not skipped and row["n_held"] > 1000
    assert row["auroc_novelty"] >= NOVELTY_FLOOR
    # they are answered as the T cells the model knows: wrong at the finest level, right at the lineage
    assert row["held_lineage_right"] >= 0.9


def test_b_cells_the_reference_lacks_stand_out_by_unused_genes_and_query_clusters_on_a_clean_study():
    """benchmarks/novelty_limits.py's two label-free measures, `pbmc`'s cells without B cells against OneK1K (no
    stimulation, one study): the memory B cells spend their counts on genes no remaining class uses and form
    clusters like no remaining class, while the query's known types, with every class in the reference, are
    seldom flagged. (On Kang 2018, half IFN-beta stimulated, both fail: docs/benchmarks.md.)"""
    query = next(q for q in accuracy.PBMC.queries if q.name == "OneK1K")
    reference = accuracy.load_reference(accuracy.PBMC, DATA)
    (view,) = novelty_limits.views_of(accuracy.load_query(query, DATA, reference), DATA)
    held = novelty.held_cells(view.truth, reference.terms["B"])

    share, threshold = novelty_limits.unused_genes(reference, view, "B")
    clusters, variable = novelty_limits.query_clusters(view)
    mismatch = novelty_limits.cluster_mismatch(reference, view, clusters, variable, "B")
    assert novelty.auroc(held, share) >= 0.9 and novelty.auroc(held, mismatch) >= 0.9
    assert (share[held] > threshold).mean() >= 0.5

    share, threshold = novelty_limits.unused_genes(reference, view, None)
    assert (share > threshold).mean() <= 0.05  # in distribution
