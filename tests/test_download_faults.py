"""Downloads from a faulty local server (issue 17, items 4-6): what a server says is checked, not believed."""

from __future__ import annotations

import signal

import pytest

from runner import cache
from runner.download import download
from runner.errors import ModelError, UsageError
from tests import corpus
from tests.conftest import PBMC_ARCHIVE, assert_cache_clean, expect_clean, sha256, start_slow_pull
from tests.servers import FaultyServer

PBMC_SHA = sha256(PBMC_ARCHIVE)
SIZE = PBMC_ARCHIVE.stat().st_size


@pytest.fixture
def faulty():
    with FaultyServer(PBMC_ARCHIVE.read_bytes()) as server:
        yield server


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setenv("CELLZOO_HTTP_RETRIES", "1")
    monkeypatch.setenv("CELLZOO_HTTP_TIMEOUT", "5")


@pytest.mark.parametrize("behaviour, with_size", corpus.DOWNLOADS)
def test_a_faulty_server_gives_the_archive_or_one_clean_error(behaviour, with_size, faulty, model_cache, monkeypatch):
    """Every answer either caches the right bytes or fails with a ModelError; nothing unverified is kept."""
    if behaviour == "bad-206":
        monkeypatch.setenv("CELLZOO_HTTP_RETRIES", "2")  # a drop, a bad resume, then the whole file
    error = expect_clean(lambda: cache.fetch_model(faulty.url(behaviour), PBMC_SHA, size=SIZE if with_size else None))
    if error is None:
        assert sha256(cache.cached_archive(PBMC_SHA)) == PBMC_SHA
    else:
        assert isinstance(error, ModelError)
        assert_cache_clean(model_cache)
    # never more than the size it must have (the registry's, or the stated cap) was kept on the way
    assert faulty.sent.get(f"/{behaviour}", 0) < FaultyServer.JUNK_LIMIT


def test_the_download_stops_at_the_registry_size(faulty, model_cache):
    error = expect_clean(lambda: cache.fetch_model(faulty.url("huge"), PBMC_SHA, size=SIZE))
    assert isinstance(error, ModelError) and f"the {SIZE} bytes the registry states" in str(error)
    declared = expect_clean(lambda: cache.fetch_model(faulty.url("huge-declared"), PBMC_SHA, size=SIZE))
    assert "314572800 bytes" in str(declared)  # refused from the header, before the body
    assert_cache_clean(model_cache)


def test_a_truncated_download_is_retried_not_blamed_on_the_publisher(faulty, model_cache):
    error = expect_clean(lambda: cache.fetch_model(faulty.url("short"), PBMC_SHA, size=SIZE))
    assert "after 2 attempts" in str(error) and f"connection closed at byte {SIZE // 2} of {SIZE}" in str(error)
    assert "checksum" not in str(error)
    unsized = expect_clean(lambda: cache.fetch_model(faulty.url("short"), PBMC_SHA))
    assert "checksum mismatch" in str(unsized) and "the transfer was damaged (try again)" in str(unsized)


def test_a_malformed_206_is_not_appended(faulty, model_cache, monkeypatch):
    monkeypatch.setenv("CELLZOO_HTTP_RETRIES", "2")
    assert expect_clean(lambda: cache.fetch_model(faulty.url("bad-206"), PBMC_SHA, size=SIZE)) is None
    first, resume, again = (r for path, r in faulty.requests if path == "/bad-206")
    assert first is None and resume.startswith("bytes=") and again is None  # the bad 206 dropped, from zero again


@pytest.mark.parametrize("name, value", corpus.HTTP_SETTINGS)
def test_malformed_http_settings_are_bad_usage(name, value, monkeypatch, tmp_path, faulty):
    monkeypatch.setenv(name, value)
    error = expect_clean(lambda: download(faulty.url("ok"), tmp_path / "a.zip"))
    assert isinstance(error, UsageError) and name in str(error)
    assert not (tmp_path / "a.zip").exists()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_download_is_resumed_by_the_next_run(how, archive_server, model_cache):
    """SIGTERM (exit 143, one line) or kill -9 during a download: the part held is resumed, not lost nor
    left for ever; the model is then cached whole."""
    proc = start_slow_pull(archive_server, model_cache, 6.0, SIZE // 5)
    proc.send_signal(how)
    _, stderr = proc.communicate(timeout=60)
    if how == signal.SIGTERM:
        assert proc.returncode == 143 and stderr.strip().splitlines()[-1].startswith("error: stopped by SIGTERM")
        assert "Traceback" not in stderr
    held = (model_cache / "downloads" / PBMC_SHA / "archive.zip").stat().st_size
    assert 0 < held < SIZE
    error = expect_clean(lambda: cache.fetch_model(archive_server.url("ok", PBMC_ARCHIVE.name), PBMC_SHA, size=SIZE))
    assert error is None and archive_server.requests[-1][1] == f"bytes={held}-"
    assert not (model_cache / "downloads" / PBMC_SHA).exists()
