"""Signals, concurrent runs and outputs (issue 17, items 8, 11-15): nothing of a user's lost, nothing half-written
left behind, one line and the right exit code. Subprocesses only where the process boundary is the behaviour."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import pytest

from runner import interrupt
from runner.files import atomic_path
from runner.resolve import resolve_model_ref
from tests import corpus
from tests.conftest import BIN, annotate_file, assert_one_line_error, expect_clean, sha256


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files of outputs (``.NAME.*.tmp``) in ``folder``."""
    return sorted(p.name for p in folder.glob(".*.tmp"))


@pytest.mark.parametrize("name", corpus.OUTPUT_MISUSES)
def test_an_output_misuse_is_refused_and_loses_nothing(name, example_copy):
    query, kwargs, expected = corpus.OUTPUT_MISUSES[name](example_copy)
    before = {p: sha256(p) for p in example_copy.parent.rglob("*") if p.is_file()}
    error = expect_clean(lambda: annotate_file(query, "pbmc", **kwargs))
    assert isinstance(error, expected), f"{name}: {error!r}"
    after = {p: sha256(p) for p in example_copy.parent.rglob("*") if p.is_file()}
    assert after == before  # the input and every earlier file unchanged; no output, no folder, no temporary file


def annotate_command(query: Path, output: Path, *options: str) -> list[str]:
    return [str(BIN / "annotate"), str(query), "-m", "pbmc", "-o", str(output), "-q", *options]


@pytest.mark.slow
def test_concurrent_runs_to_one_output_let_exactly_one_write_it(example_copy):
    resolve_model_ref("pbmc")  # cached: the runs race on the output, not on the download
    output = example_copy.with_name("o.h5ad")
    runs = [
        subprocess.Popen(annotate_command(example_copy, output), stderr=subprocess.PIPE, text=True) for _ in range(4)
    ]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 2, 2, 2], errors
    assert all("exists" in e for e, run in zip(errors, runs, strict=True) if run.returncode == 2)
    with h5py.File(output) as f:
        assert "pbmc_predicted" in f["obs"]
    assert leftovers(output.parent) == []


def _start_streamed(example_copy: Path) -> tuple[subprocess.Popen, Path]:
    """A streamed run with small blocks (a few seconds), stopped once its temporary output exists."""
    resolve_model_ref("pbmc")
    output = example_copy.with_name("o.h5ad")
    run = subprocess.Popen(
        annotate_command(example_copy, output, "--backed", "--batch-size", "10"), stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not leftovers(output.parent) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.01)
    return run, output


def test_sigterm_is_handled_as_ctrl_c_and_leaves_nothing(example_copy):
    run, output = _start_streamed(example_copy)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert_one_line_error(subprocess.CompletedProcess([], run.returncode, "", stderr), 143, "stopped by SIGTERM")
    assert not output.exists() and leftovers(output.parent) == []


def test_what_kill_9_left_is_swept_by_the_next_run(example_copy):
    run, output = _start_streamed(example_copy)
    run.kill()
    run.wait(timeout=60)
    assert leftovers(output.parent) and output.exists() and output.stat().st_size == 0  # the claim, abandoned
    alive = output.with_name(f".o.h5ad.{os.getpid()}@{os.uname().nodename}.keep.tmp")  # a live run's
    alive.touch()
    assert expect_clean(lambda: annotate_file(example_copy, "pbmc", output=output)) is None
    assert leftovers(output.parent) == [alive.name]  # the dead run's removed, the live run's kept
    with h5py.File(output) as f:
        assert "pbmc_predicted" in f["obs"]


def test_a_signal_swallowed_by_a_library_still_stops_the_rename(tmp_path):
    """h5py swallows a KeyboardInterrupt raised inside it; the run must not then rename the output into place."""
    saved = interrupt.install()
    target = tmp_path / "out.h5ad"
    try:
        with pytest.raises(interrupt.Interrupted), atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
            except KeyboardInterrupt:
                pass  # what the library did
    finally:
        interrupt.restore(saved)
    assert not target.exists() and leftovers(tmp_path) == []


def test_a_signal_just_after_the_temporary_file_is_made_leaves_nothing(tmp_path, monkeypatch):
    """SIGTERM between mkstemp and the block that removes its file (what `kill` right after the temporary output
    appears could hit: the full suite once left `.o.h5ad.*.tmp` behind): it is raised once the file is known."""
    import tempfile

    made = tempfile.mkstemp

    def mkstemp_then_signal(*args, **kwargs):
        out = made(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler would run here, were the signal not held
        return out

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_signal)
    saved = interrupt.install()
    try:
        with pytest.raises(interrupt.Interrupted), atomic_path(tmp_path / "out.h5ad") as tmp:
            tmp.write_bytes(b"half")
    finally:
        interrupt.restore(saved)
    assert list(tmp_path.iterdir()) == []


def _small_files():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_a_full_disk_is_one_line_and_leaves_nothing(streamed, example_copy):
    resolve_model_ref("pbmc")
    output = example_copy.parent / "new" / "o.h5ad"
    command = annotate_command(example_copy, output, *(["--backed"] if streamed else []))
    done = subprocess.run(command, preexec_fn=_small_files, capture_output=True, text=True, timeout=300)
    assert_one_line_error(done, 1, "could not write")
    assert not output.parent.exists()


def test_inputs_and_outputs_are_checked_before_anything_runs(example_copy):
    """Exit 2 from the CLI for the usage errors of the corpus (one of them, end to end)."""
    done = subprocess.run(
        annotate_command(example_copy, example_copy.with_name("o.h5ad"), "--key-added", "a/b"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(done, 2, "--key-added 'a/b'")
    a_file = example_copy.parent / "afile"
    a_file.write_text("a user's file")
    command = annotate_command(example_copy, example_copy.with_name("o.h5ad"), "--report", str(a_file))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert_one_line_error(done, 2, "is not a folder")
    assert not example_copy.with_name("o.h5ad").exists()  # refused before the run, not after its output


def test_overwrite_into_a_folder_that_refuses_files_fails_before_the_run(example_copy):
    """With --overwrite no output name is claimed; a folder the user cannot write in must still fail before the
    run (exit 2, a usage error), not after it (exit 1), and the earlier output stays. Root is made an ordinary
    user for the run (setpriv drops its override of file permissions)."""
    folder = example_copy.parent / "read-only"
    folder.mkdir()
    earlier = folder / "o.h5ad"
    earlier.write_bytes(b"a user's earlier result")
    caps = "-dac_override,-dac_read_search"
    as_user = ["setpriv", "--bounding-set", caps, "--inh-caps", caps] if os.geteuid() == 0 else []
    if as_user and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux)")
    folder.chmod(0o555)
    try:
        command = [*as_user, *annotate_command(example_copy, earlier, "--overwrite")]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        folder.chmod(0o755)
    assert_one_line_error(done, 2, "Permission denied")
    assert earlier.read_bytes() == b"a user's earlier result" and leftovers(folder) == []
