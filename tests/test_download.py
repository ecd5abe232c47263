"""Downloads from a real HTTP server on 127.0.0.1: pinned, resumed, refused, timed out, concurrent."""

from __future__ import annotations

import subprocess

import anndata as ad
import pytest

from tests.conftest import BIN, PBMC_ARCHIVE, assert_cache_clean, run_cli, sha256

PBMC_SHA = sha256(PBMC_ARCHIVE)
FAST = {"CELLZOO_HTTP_RETRIES": "1", "CELLZOO_HTTP_TIMEOUT": "1"}


def pinned(server, mode: str, digest: str = PBMC_SHA) -> str:
    return f"{server.url(mode, PBMC_ARCHIVE.name)}#sha256={digest}"


def test_pinned_url_is_downloaded_verified_and_cached(archive_server, model_cache):
    done = run_cli("cellzoo", "models", "pull", pinned(archive_server, "ok"))
    assert done.returncode == 0, done.stderr
    assert (model_cache / "models" / PBMC_SHA / "MLmodel").is_file()
    assert sha256(model_cache / "archives" / f"{PBMC_SHA}.zip") == PBMC_SHA
    assert f"download {PBMC_ARCHIVE.name}" in done.stderr  # the progress bar
    again = run_cli("cellzoo", "models", "pull", pinned(archive_server, "ok"))
    assert again.returncode == 0 and archive_server.gets("/ok/") == 1  # cached: no second download


def test_dropped_connection_is_resumed_with_range(archive_server, model_cache):
    done = run_cli("cellzoo", "models", "pull", pinned(archive_server, "drop"), "-v")
    assert done.returncode == 0, done.stderr
    half = archive_server.dropped[PBMC_ARCHIVE.name]  # bytes sent before the server hung up
    (first, no_range), (second, resume) = archive_server.requests
    assert first == second == f"/drop/{PBMC_ARCHIVE.name}" and no_range is None
    start = int(resume.removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= half  # resumed from what had reached the disk, not from zero
    assert "resuming" in done.stderr and sha256(model_cache / "archives" / f"{PBMC_SHA}.zip") == PBMC_SHA


def test_wrong_bytes_are_refused_with_both_hashes(archive_server, model_cache, example_copy):
    done = run_cli(
        "annotate",
        str(example_copy),
        "-m",
        pinned(archive_server, "wrong"),
        "-o",
        str(example_copy.with_name("o.h5ad")),
    )
    assert done.returncode == 1 and "checksum mismatch" in done.stderr and PBMC_SHA in done.stderr
    seen = done.stderr.split("got ")[1][:64]
    assert len(seen) == 64 and seen != PBMC_SHA and "Traceback" not in done.stderr
    assert_cache_clean(model_cache)


@pytest.mark.slow
def test_slow_server_still_completes_with_progress(archive_server, model_cache):
    archive_server.slow_seconds = 2.0
    done = run_cli("cellzoo", "models", "pull", pinned(archive_server, "slow"), env=FAST)
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr and (model_cache / "models" / PBMC_SHA).is_dir()


@pytest.mark.slow
def test_stalled_server_times_out_and_leaves_nothing(archive_server, model_cache):
    archive_server.stall_seconds = 4.0
    done = run_cli("cellzoo", "models", "pull", pinned(archive_server, "stall"), env=FAST)
    assert done.returncode == 1 and "after 2 attempts" in done.stderr and "timed out" in done.stderr, done.stderr
    assert archive_server.gets("/stall/") == 2
    assert_cache_clean(model_cache)


def test_http_404_fails_at_once(archive_server, model_cache):
    done = run_cli("cellzoo", "models", "pull", f"{archive_server.url('ok', 'nope.zip')}#sha256={PBMC_SHA}")
    assert done.returncode == 1 and "HTTP 404" in done.stderr and archive_server.gets("nope") == 1
    assert_cache_clean(model_cache)


def test_unreachable_host(model_cache):
    from tests.servers import free_port

    done = run_cli("cellzoo", "models", "pull", f"http://127.0.0.1:{free_port()}/m.zip#sha256={PBMC_SHA}", env=FAST)
    assert done.returncode == 1 and "could not download" in done.stderr and "Check the address" in done.stderr
    assert "Traceback" not in done.stderr
    assert_cache_clean(model_cache)


def test_unpinned_url_needs_trust(archive_server, model_cache):
    url = archive_server.url("ok", PBMC_ARCHIVE.name)
    refused = run_cli("cellzoo", "models", "pull", url)
    assert refused.returncode == 2 and "--trust" in refused.stderr and "runs its Python code" in refused.stderr
    assert archive_server.requests == []  # refused before anything was fetched
    trusted = run_cli("cellzoo", "models", "pull", url, "--trust")
    assert trusted.returncode == 0, trusted.stderr
    assert PBMC_SHA in trusted.stdout  # the hash to pin it with next time


def test_offline_and_not_cached_fails_fast(archive_server, model_cache, example_copy):
    ref = pinned(archive_server, "ok")
    done = run_cli("annotate", str(example_copy), "-m", ref, "--offline")
    assert done.returncode == 1 and "offline" in done.stderr and "models pull" in done.stderr
    assert archive_server.requests == [] and not example_copy.with_name("query.annotated.h5ad").exists()
    assert_cache_clean(model_cache)
    assert run_cli("cellzoo", "models", "pull", ref).returncode == 0
    out = example_copy.with_name("o.h5ad")
    cached = run_cli("annotate", str(example_copy), "-m", ref, "-o", str(out), env={"CELLZOO_OFFLINE": "1"})
    assert cached.returncode == 0, cached.stderr
    assert archive_server.gets("/ok/") == 1


@pytest.mark.slow
def test_concurrent_runs_on_one_model_download_it_once(archive_server, model_cache, example_copy):
    """Two `annotate` and two `models pull` at once on an uncached model: one download, all succeed."""
    archive_server.slow_seconds = 3.0
    ref = pinned(archive_server, "slow")
    outs = [example_copy.with_name(f"o{i}.h5ad") for i in range(2)]
    commands = [[str(BIN / "annotate"), str(example_copy), "-m", ref, "-o", str(o), "-q"] for o in outs]
    commands += [[str(BIN / "cellzoo"), "models", "pull", ref, "-q"] for _ in range(2)]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert archive_server.gets("/slow/") == 1
    assert [p.name for p in (model_cache / "models").iterdir()] == [PBMC_SHA]
    first, second = (ad.read_h5ad(o) for o in outs)
    assert (first.obs["pbmc_predicted"] == second.obs["pbmc_predicted"]).all()
