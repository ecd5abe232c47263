"""Damaged and hostile h5ad inputs (issue 17, items 16, 17), in memory and streamed: refused the same way, with
one cellzoo error, before any result is written; or, where the file is sound, annotated correctly."""

from __future__ import annotations

import os

import anndata as ad
import numpy as np
import pytest

from runner.errors import CellzooError, InputError
from tests import corpus
from tests.conftest import annotate_file, expect_clean, sha256

CASES = [(name, *case, None) for name, case in corpus.INPUTS.items()]
CASES += [(name, damage, True, "counts") for name, damage in corpus.LAYER_CASES.items()]


@pytest.mark.parametrize("backed", [False, True], ids=["in-memory", "backed"])
@pytest.mark.parametrize("name, damage, refused, layer", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_h5ad_is_refused_or_read_right(name, damage, refused, layer, backed, tmp_path):
    path = corpus.damaged_h5ad(tmp_path, damage)
    before = sha256(path)
    output = tmp_path / "out" / "annotated.h5ad"
    error = expect_clean(lambda: annotate_file(path, "pbmc", output=output, backed=backed, counts_layer=layer))
    assert sha256(path) == before  # the input is never modified
    if refused:
        assert isinstance(error, CellzooError), f"{name}: {error}"  # UsageError: a layout only --in-memory reads
        assert not (tmp_path / "out").exists()  # nothing written, not even the folder
        return
    assert error is None, f"{name}: {error}"
    result = ad.read_h5ad(output)
    assert result.uns["pbmc"]["cells"]["empty"] == 0  # 2**63 counts do not wrap around to an empty cell
    assert result.n_obs == corpus.BASE_CELLS


@pytest.mark.parametrize("name, damage, refused, layer", CASES, ids=[c[0] for c in CASES])
def test_inspect_describes_a_damaged_h5ad_or_refuses_it(name, damage, refused, layer, tmp_path):
    """`cellzoo inspect` reads the same files: a report (which offers no command for a damaged matrix) or one error."""
    from runner.describe import inspect_input
    from runner.options import CheckOptions, ReadOptions

    path = corpus.damaged_h5ad(tmp_path, damage)
    report = None

    def inspect() -> None:
        nonlocal report
        report = inspect_input(path, ReadOptions(), model_ref="pbmc", checks=CheckOptions(counts_layer=layer))

    error = expect_clean(inspect)
    if error is None and refused:
        assert not report.command, f"{name}: {report.lines()}"


def test_external_links_are_followed_only_when_asked(tmp_path):
    from runner.options import ReadOptions

    path = corpus.damaged_h5ad(tmp_path, corpus.INPUTS["external link to another file"][0])
    options = ReadOptions(external_links=True)
    assert expect_clean(lambda: annotate_file(path, "pbmc", output=tmp_path / "o.h5ad", read_options=options)) is None


def test_a_pipe_as_input_is_refused_at_once(tmp_path):
    fifo = tmp_path / "query.h5ad"
    os.mkfifo(fifo)
    error = expect_clean(lambda: annotate_file(fifo, "pbmc", output=tmp_path / "o.h5ad"))
    assert isinstance(error, InputError) and "not a regular file" in str(error)


def test_the_block_checks_cost_little(tmp_path):
    """The per-block structure check (column indices, one min and one max) on a 10,000-cell block of
    realistic density: reported by the README; here only bounded, so that the suite stays honest on a busy machine."""
    import time

    from runner.query import indices_problem

    rng = np.random.default_rng(0)
    indices = rng.integers(0, 33_694, size=10_000 * 2_500, dtype=np.int32)  # 2,500 genes detected per cell
    start = time.perf_counter()
    for _ in range(5):
        assert indices_problem(indices, 33_694) == ""
    assert (time.perf_counter() - start) / 5 < 0.2
