"""The accuracy benchmark's pipeline on real data: cellzoo `linear` built from the lung cell-line recipe,
with and without the held-out line, annotated on Drop-seq through the runner, scored and tabulated."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks import accuracy
from tests.conftest import DATA, data_file

pytestmark = pytest.mark.slow


def test_lung_benchmark_scores_linear_and_finds_the_held_out_line_less_certain(tmp_path):
    query = accuracy.LUNG.queries[0]
    data_file(query.file)
    task = dataclasses.replace(accuracy.LUNG, queries=(query,))
    methods = tuple(m for m in accuracy.METHODS if m.key == "linear")
    results = accuracy.run([task], methods, DATA, tmp_path)

    scores = {r["method"]: r for r in results.scores}
    assert set(scores) == {"cellzoo linear"}
    linear = scores["cellzoo linear"]
    assert linear["accuracy"] >= 0.8
    # Cellosaurus ids match exactly or not at all: the answer is the finest line or Unassigned
    assert linear["exact"] >= linear["accuracy"]
    assert linear["finest"] + linear["unassigned"] == pytest.approx(1.0)
    assert linear["accuracy_assigned"] >= linear["accuracy"]
    assert 0.0 <= linear["ece"] <= 1.0 and 0.0 <= linear["unassigned"] <= 1.0
    present, used = map(int, linear["genes"].split("/"))
    assert 0 < present <= used

    ood = {r["method"]: r for r in results.ood}
    assert ood["cellzoo linear"]["held_out"] == "H2228" and ood["cellzoo linear"]["n_held_out"] == 65
    assert ood["cellzoo linear"]["auroc"] > 0.5  # held-out cells are less certain than the lines it knows
    assert 0.0 <= ood["cellzoo linear"]["flagged_held_out"] <= 1.0
    assert set(ood) == {"cellzoo linear"}

    table = accuracy.accuracy_table(results)
    assert f"| {query.name} | cellzoo linear | {linear['accuracy']:.3f} |" in table
    assert "cellzoo linear" in accuracy.ood_table(results)
