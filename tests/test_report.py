"""The HTML report of an annotated file (runner.report): its figures, what it says of an older model, and that
it renders in headless Chromium with its images and no console error."""

from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from model_zoo import build
from model_zoo.linear.compute import LinearWeights
from runner.annotate import annotate
from runner.options import RunOptions
from runner.report import FIGURES, model_parts, write_report
from tests.conftest import EXAMPLE, PBMC_ARCHIVE, PBMC_VERSION, data_file, unpack_zoo_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def with_reference_summary(model: Path) -> Path:
    """The zoo's pbmc model given its reference backdrop and markers, as ``cellzoo build`` now stores them: its
    reference cells are the recipe's reference cells, in order, so their labels are the recipe's."""
    recipe, _ = build.load_recipe("pbmc")
    reference, _, _, _ = build.prepare_reference(recipe, [data_file("pbmc/soupx_pbmc4k.h5ad")])
    with np.load(model / "artifacts" / "weights.npz") as arrays:
        weights = LinearWeights.from_arrays(dict(arrays))
    assert len(weights.reference_umap) == len(reference.labels)
    index = np.searchsorted(weights.classes, reference.labels)
    weights = dataclasses.replace(weights, reference_label=index)
    build.save_reference_summary(model, weights, reference.counts, reference.genes, reference.labels)
    return model


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("report")
    model = with_reference_summary(unpack_zoo_model(PBMC_ARCHIVE.stem, work / "pbmc"))
    annotated = work / "annotated.h5ad"
    annotate(EXAMPLE, str(model), output=annotated, run=RunOptions(env_manager="local"))
    return write_report(annotated, work / "report")


@pytest.mark.slow
def test_the_report_writes_every_figure_as_png_and_svg(report):
    for name in FIGURES:
        assert (report.parent / "figures" / f"{name}.png").stat().st_size > 5_000
        assert (report.parent / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    page = report.read_text()
    assert page.count('src="data:image/png;base64,') == len(FIGURES)  # self-contained
    assert f"pbmc {PBMC_VERSION}" in page and "Gene overlap" in page and "Provenance" in page
    assert "CD79A" in (report.parent / "figures" / "dotplot.svg").read_text()  # B cells' marker, from the model


def test_a_model_built_before_the_backdrop_says_what_the_report_lacks(tmp_path):
    parts = model_parts(unpack_zoo_model("pbmc-1.2.0", tmp_path / "pbmc"))  # released before the backdrop
    assert parts.reference_umap is not None and parts.reference_label is None and parts.markers is None
    assert any("reference cells' labels" in note for note in parts.missing)
    assert any("marker genes" in note for note in parts.missing)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_the_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    profile = tempfile.mkdtemp(dir=tmp_path)
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run(
        [*common, "--enable-logging=stderr", "--v=0", "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<img") == len(FIGURES)
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    shot = tmp_path / "report.png"  # also kept as docs/report_screenshot.png by hand, after looking at it
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", report.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"), dtype=float)
    assert pixels.std() > 20  # figures drawn, not a blank page


def test_a_report_stopped_by_a_signal_leaves_the_earlier_report_whole(report, tmp_path, monkeypatch):
    """SIGTERM while a report's figures are drawn (`annotate --report`, `cellzoo report` killed by `kill` or
    Slurm): the page and figures already in the folder stay as they were, no figure of the new one lands
    beside them, and no temporary folder is left."""
    import os
    import signal

    from runner import interrupt
    from runner.report import Figures

    folder = shutil.copytree(report.parent, tmp_path / "report")
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    save = Figures.save

    def save_then_signal(self, fig, name):
        save(self, fig, name)
        os.kill(os.getpid(), signal.SIGTERM)  # after the first figure is on disk

    monkeypatch.setattr(Figures, "save", save_then_signal)
    saved = interrupt.install()
    try:
        with pytest.raises(interrupt.Interrupted):
            write_report(report.parent.parent / "annotated.h5ad", folder)
    finally:
        interrupt.restore(saved)
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]

    saved = interrupt.install()  # a new folder, several levels deep: none of it is left
    try:
        with pytest.raises(interrupt.Interrupted):
            write_report(report.parent.parent / "annotated.h5ad", tmp_path / "new" / "deeper" / "report")
    finally:
        interrupt.restore(saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_a_report_into_a_link_to_a_folder_elsewhere_is_written_there(report, tmp_path):
    """A report folder that is a link to another file system (scratch space on a cluster) or a mount point:
    the report is placed by renames within the folder itself, which work there."""
    elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        (tmp_path / "report").symlink_to(elsewhere)
        page = write_report(report.parent.parent / "annotated.h5ad", tmp_path / "report")
        assert (elsewhere / "index.html").read_bytes() == page.read_bytes()
        assert {p.name for p in (elsewhere / "figures").iterdir()} >= {f"{name}.png" for name in FIGURES[:4]}
        assert sorted(p.name for p in elsewhere.iterdir()) == ["figures", "index.html"]
    finally:
        shutil.rmtree(elsewhere)


def test_a_report_folder_that_cannot_be_one_or_holds_a_report_is_refused_before_the_run(report, tmp_path):
    from runner.errors import InputError, UsageError
    from runner.report import check_report_dir

    a_file = tmp_path / "afile"
    a_file.write_text("a user's file")
    for folder in (a_file, a_file / "report"):
        with pytest.raises(UsageError, match="afile"):
            check_report_dir(folder, overwrite=True)
    with pytest.raises(UsageError, match="--overwrite"):
        check_report_dir(report.parent, overwrite=False)
    check_report_dir(report.parent, overwrite=True)
    check_report_dir(tmp_path / "new", overwrite=False)

    truncated = tmp_path / "truncated.h5ad"  # `cellzoo report` of a damaged file: one line, not a traceback
    truncated.write_bytes((report.parent.parent / "annotated.h5ad").read_bytes()[:100_000])
    with pytest.raises(InputError, match="not a readable h5ad"):
        write_report(truncated, tmp_path / "r")
    assert not (tmp_path / "r").exists()
