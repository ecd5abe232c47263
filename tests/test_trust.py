"""Running only trusted code (issue 17, items 1-3): a bare name is the registry's, a cached model is verified
before every load, and a folder named by a URL needs --trust."""

from __future__ import annotations

import py_compile
import shutil

import pytest

from runner import cache
from runner.errors import UsageError
from runner.resolve import resolve_model_ref
from tests import corpus
from tests.conftest import PBMC_ARCHIVE, PBMC_VERSION, expect_clean, sha256, unpack_zoo_model

PBMC_SHA = sha256(PBMC_ARCHIVE)


@pytest.mark.parametrize("name, kind", corpus.LOOKALIKES)
def test_a_local_lookalike_never_stands_in_for_the_registry(name, kind, tmp_path, monkeypatch):
    """./pbmc, ./pbmc@1.2.0 (folders or files) beside the run: `-m NAME` is refused with both readings,
    and nothing of them is loaded; written as a path, the folder is used."""
    monkeypatch.chdir(tmp_path)
    planted = unpack_zoo_model(f"pbmc-{PBMC_VERSION}", tmp_path / name) if kind == "folder" else None
    if kind == "file":
        shutil.copy(PBMC_ARCHIVE, tmp_path / name)
    error = expect_clean(lambda: resolve_model_ref(name))
    assert isinstance(error, UsageError) and "ambiguous" in str(error)
    message = str(error)
    assert f"./{name}" in message and ("registry model pbmc" in message or "no registry model" in message)
    assert "pass --trust" not in message.lower()  # the hint must not be the way to run it
    assert not (cache.cache_dir() / "models").exists()  # nothing fetched, nothing loaded
    if planted is not None:
        assert resolve_model_ref(f"./{name}").path == planted.resolve()


def test_a_file_url_naming_a_folder_needs_trust(tmp_path):
    folder = unpack_zoo_model(f"pbmc-{PBMC_VERSION}", tmp_path / "m")
    error = expect_clean(lambda: resolve_model_ref(folder.as_uri()))
    assert isinstance(error, UsageError) and "--trust" in str(error) and "folder" in str(error)
    assert resolve_model_ref(folder.as_uri(), trust=True).path == folder.resolve()


@pytest.mark.parametrize("tamper", corpus.TAMPERINGS, ids=[t.__name__.strip("_") for t in corpus.TAMPERINGS])
def test_a_tampered_cached_model_is_never_loaded(tamper):
    """An edited file, a planted .pyc, a forged folder or archive: the next resolve finds it, fetches the
    model again, and loads exactly the archive's files; `verify` reports it too (nothing is skipped)."""
    folder = resolve_model_ref("pbmc").path
    tamper(folder, cache.cached_archive(PBMC_SHA))
    assert cache.verify_cached(PBMC_SHA).problem
    again = resolve_model_ref("pbmc").path
    assert again == folder and cache.verify_cached(PBMC_SHA).problem == ""
    assert not list(folder.rglob("__pycache__"))


def test_a_planted_pyc_that_python_would_load_is_refused(tmp_path):
    """The .pyc is valid for the source's size and time (Python would run it instead of the source)."""
    folder = resolve_model_ref("pbmc").path
    source = folder / "model_code.py"
    evil = tmp_path / "model_code.py"
    evil.write_text("raise SystemExit('planted bytecode ran')\n")
    pyc = folder / "__pycache__" / "model_code.cpython-311.pyc"
    py_compile.compile(str(evil), cfile=str(pyc), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    assert cache.verify_cached(PBMC_SHA).problem == "__pycache__/model_code.cpython-311.pyc is not in the archive"
    assert not (resolve_model_ref("pbmc").path / "__pycache__").exists() and source.is_file()
