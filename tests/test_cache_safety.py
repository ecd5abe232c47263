"""The cache touches only what it made, and refuses archives it could not verify later (issue 17, items 7, 9, 10)."""

from __future__ import annotations

import subprocess

import pytest

from runner import cache
from runner.errors import ModelError
from runner.resolve import resolve_model_ref
from tests import corpus
from tests.conftest import PBMC_ARCHIVE, assert_cache_clean, expect_clean, run_cli, sha256, start_slow_pull

PBMC_SHA = sha256(PBMC_ARCHIVE)


def _user_files(root):
    """Files of a user's that happen to sit where the cache keeps its own."""
    files = {
        root / "models" / "thesis" / "chapter1.tex": b"years of work",
        root / "archives" / "photos.zip": b"PK not really",
        root / "downloads" / "paper.pdf": b"%PDF",
        root / "models" / ("a" * 63 + "g") / "notes.txt": b"not a sha256",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_verify_and_clean_leave_a_users_folder_alone(model_cache):
    files = _user_files(model_cache)
    for command in (("models", "verify"), ("cache", "clean")):  # no marker: not a cellzoo cache
        done = run_cli("cellzoo", *command)
        assert done.returncode == 0 and "nothing" in done.stdout, done.stderr
    resolve_model_ref("pbmc")  # now a cache too: the marker is written, beside the user's files
    assert (model_cache / cache.MARKER).is_file() and cache.cached_sha256s() == [PBMC_SHA]
    freed, skipped = cache.clean()
    assert freed > 0 and skipped == 0 and not cache.is_cached(PBMC_SHA)
    assert all(path.read_bytes() == data for path, data in files.items())


def test_clean_during_a_download_skips_it_and_the_download_completes(archive_server, model_cache):
    pull = start_slow_pull(archive_server, model_cache, 4.0)
    assert cache.clean()[1] == 1  # the download in progress was skipped, not pulled from under it
    _, stderr = pull.communicate(timeout=120)
    assert pull.returncode == 0 and "Traceback" not in stderr, stderr
    assert cache.verify_cached(PBMC_SHA).problem == ""


@pytest.mark.parametrize("name", corpus.ARCHIVES)
def test_a_crafted_model_archive_is_refused_and_nothing_is_kept(name, tmp_path, model_cache):
    archive = corpus.ARCHIVES[name](tmp_path / "model.zip")
    error = expect_clean(lambda: resolve_model_ref(str(archive), trust=True))
    assert isinstance(error, ModelError), name
    assert_cache_clean(model_cache)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()


def test_verify_reports_a_kept_archive_it_cannot_read(model_cache, tmp_path):
    """A cache written before archives had to be zips: verify says so (and evicts), no traceback."""
    tar = corpus.ARCHIVES["tar.gz model archive"](tmp_path / "m.tgz")
    digest = sha256(tar)
    (model_cache / "archives").mkdir(parents=True)
    (model_cache / "archives" / f"{digest}.zip").write_bytes(tar.read_bytes())
    (model_cache / "models" / digest).mkdir(parents=True)
    (model_cache / cache.MARKER).write_text(cache.MARKER_TEXT)
    done = run_cli("cellzoo", "models", "verify")
    assert done.returncode == 1 and "is not a readable zip archive" in done.stdout and "Traceback" not in done.stderr


def test_what_a_killed_fetch_left_is_resumed_or_removed(model_cache):
    """kill -9 during an unpack leaves its half tree beside the partial archive; the next fetch starts the tree
    anew (nothing of it reaches the model); the folder of an unpinned fetch whose process is gone is removed,
    that of a live one kept."""
    from runner.files import owner_tag

    staging = model_cache / "downloads" / PBMC_SHA
    (staging / "model" / "artifacts").mkdir(parents=True)
    (staging / "model" / "artifacts" / "planted.py").write_text("print('from a half-done unpack')\n")
    (staging / "archive.zip").write_bytes(PBMC_ARCHIVE.read_bytes()[:1000])
    gone = subprocess.Popen(["true"])  # a process that has ended: its pid names no one now
    gone.wait()
    host = owner_tag().partition("@")[2]
    dead, alive = (model_cache / "downloads" / f"{pid}@{host}.x1y2z3" for pid in (gone.pid, owner_tag().split("@")[0]))
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "archive.zip").write_bytes(b"partial")
    folder = resolve_model_ref("pbmc").path
    assert not (folder / "artifacts" / "planted.py").exists() and cache.verify_cached(PBMC_SHA).problem == ""
    assert not staging.exists() and not dead.exists() and alive.exists()
