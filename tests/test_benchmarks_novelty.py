"""The novelty benchmark's pipeline on real data: cellzoo `linear` built from the lung cell-line recipe with
every line and without H2228, annotated on Drop-seq through the runner; the held-out line's cells must
score as less familiar than the others, and the tables render."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks import accuracy, novelty
from tests.conftest import DATA, data_file

pytestmark = pytest.mark.slow


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
