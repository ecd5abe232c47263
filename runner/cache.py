"""The local model cache: content-addressed by sha256, verified before anything is unpacked.

Layout under :func:`cache_dir` (``$CELLZOO_CACHE_DIR``, else the platform cache folder)::

    models/<sha256>/        an unpacked, verified model (renamed into place whole)
    archives/<sha256>.zip   the verified archive it was unpacked from, kept so that
                            `cellzoo models verify` can re-hash it and compare every unpacked file
    downloads/              temporary folders of downloads in progress (removed on success or failure)
    locks/<sha256>.lock     one process fetches a given model at a time; the others wait, then reuse it

A model counts as cached when both its folder (with an ``MLmodel``) and its archive are there. A
cached model needs no network. Nothing that failed its sha256 check is ever kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from runner.archive import safe_extract, sha256_file
from runner.errors import ModelError

logger = logging.getLogger(__name__)

CACHE_ENV = "CELLZOO_CACHE_DIR"
REMOTE_SCHEMES = ("http://", "https://")
IGNORED_IN_VERIFY = "__pycache__"  # Python writes bytecode beside a model's code when it is loaded


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get(CACHE_ENV) or user_cache_dir("cellzoo")).expanduser()


def cached_model_dir(sha256: str) -> Path:
    return cache_dir() / "models" / sha256


def cached_archive(sha256: str) -> Path:
    return cache_dir() / "archives" / f"{sha256}.zip"


def is_cached(sha256: str) -> bool:
    return (cached_model_dir(sha256) / "MLmodel").is_file() and cached_archive(sha256).is_file()


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_SCHEMES)


def cached_sha256s() -> list[str]:
    """Every sha256 with a model folder or an archive in the cache."""
    names = {p.name for p in (cache_dir() / "models").glob("*") if p.is_dir()}
    names |= {p.stem for p in (cache_dir() / "archives").glob("*.zip")}
    return sorted(names)


@contextlib.contextmanager
def _lock(sha256: str) -> Iterator[None]:
    from filelock import FileLock

    (cache_dir() / "locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir() / "locks" / f"{sha256}.lock")):
        yield


@contextlib.contextmanager
def _staging() -> Iterator[Path]:
    root = cache_dir() / "downloads"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        yield Path(tmp)


def fetch_model(url: str, sha256: str, *, size: int | None = None, offline: bool = False) -> Path:
    """The unpacked model for the archive at ``url``, whose bytes must hash to ``sha256``.

    ``url`` is a local path, a ``file://`` or an ``http(s)://`` URL. With ``offline``, a remote
    archive that is not cached fails at once. Nothing unverified is kept.

    Raises
    ------
    ModelError
        Not cached while offline, a failed download, a checksum mismatch (both hashes in the message),
        or an archive that is unsafe or not an MLflow model.
    """
    if is_cached(sha256):
        return cached_model_dir(sha256)
    if offline and is_remote(url):
        raise ModelError(
            f"offline, and the model {url} (sha256 {sha256[:12]}…) is not in the cache {cache_dir()}; "
            "run `cellzoo models pull` for it while online, or drop --offline / CELLZOO_OFFLINE"
        )
    with _lock(sha256):
        if is_cached(sha256):  # another process finished it while we waited
            return cached_model_dir(sha256)
        with _staging() as tmp:
            archive = _obtain(url, tmp / "archive.zip", size)
            seen = sha256_file(archive)
            if seen != sha256:
                raise ModelError(
                    f"checksum mismatch for {url}: expected sha256 {sha256}, got {seen}; the archive was refused "
                    "and deleted. It changed since it was pinned: ask its publisher, or pin the new hash."
                )
            return _install(archive, sha256, url)


def fetch_unpinned(url: str, *, offline: bool = False) -> tuple[Path, str]:
    """Fetch an archive whose sha256 is not known in advance (an unpinned URL the user trusts).

    Returns the unpacked model and the archive's sha256 (to record, and to pin it next time).
    """
    if offline and is_remote(url):
        raise ModelError(
            f"offline, and {url} has no pinned sha256 to find it in the cache by; "
            "pin it as URL#sha256=<hex> (the hash is in uns of an earlier run)"
        )
    with _staging() as tmp:
        return store_archive(_obtain(url, tmp / "archive.zip", None), url)


def store_archive(archive: Path, source: str) -> tuple[Path, str]:
    """Put a local archive into the cache (hashed as it is copied in). Returns the model and sha256."""
    with _staging() as tmp:
        copy = Path(shutil.copyfile(archive, tmp / "archive.zip"))  # hash the bytes we keep, not the original
        sha256 = sha256_file(copy)
        with _lock(sha256):
            if is_cached(sha256):
                return cached_model_dir(sha256), sha256
            return _install(copy, sha256, source), sha256


def _install(archive: Path, sha256: str, source: str) -> Path:
    """Unpack a verified archive beside it and rename both into place (the lock is held)."""
    unpacked = archive.parent / "model"
    try:
        safe_extract(archive, unpacked)
    except ModelError as err:
        raise ModelError(f"{source}: {err}") from err
    if not (unpacked / "MLmodel").is_file():
        raise ModelError(f"{source} is not an MLflow model archive (no MLmodel at its root)")
    target, kept = cached_model_dir(sha256), cached_archive(sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    kept.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # a leftover of an interrupted install or a failed verify: never trust it
        shutil.rmtree(target)
    os.replace(archive, kept)
    os.replace(unpacked, target)
    logger.info("cached model %s from %s in %s", sha256[:12], source, target)
    return target


def _obtain(url: str, dest: Path, size: int | None) -> Path:
    """A local copy of ``url`` at ``dest``: HTTP(S) is downloaded, a local file is copied."""
    if is_remote(url):
        from runner.download import download

        download(url, dest, expected_size=size)
        return dest
    path = Path(url2pathname(urlparse(url).path)) if url.startswith("file://") else Path(url).expanduser()
    if not path.is_file():
        raise ModelError(f"model archive {path} does not exist")
    return Path(shutil.copyfile(path, dest))


@dataclass(frozen=True)
class VerifyResult:
    """What ``models verify`` found for one cached sha256 (``problem`` is empty when it is sound)."""

    sha256: str
    problem: str = ""


def verify_cached(sha256: str) -> VerifyResult:
    """Re-hash the kept archive and compare every unpacked file with the archive's entry.

    A file missing, changed or added (other than Python's ``__pycache__``) is a problem.
    """
    archive, folder = cached_archive(sha256), cached_model_dir(sha256)
    if not archive.is_file():
        return VerifyResult(sha256, "its archive is missing")
    seen = sha256_file(archive)
    if seen != sha256:
        return VerifyResult(sha256, f"its archive hashes to {seen}")
    if not folder.is_dir():
        return VerifyResult(sha256, "its unpacked folder is missing")
    expected = set()
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            expected.add(info.filename)
            path = folder / info.filename
            if not path.is_file():
                return VerifyResult(sha256, f"{info.filename} is missing")
            if path.read_bytes() != zf.read(info):
                return VerifyResult(sha256, f"{info.filename} differs from the archive")
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and IGNORED_IN_VERIFY not in relative.parts and relative.as_posix() not in expected:
            return VerifyResult(sha256, f"{relative} is not in the archive")
    return VerifyResult(sha256)


def evict(sha256: str) -> bool:
    """Remove a model and its archive from the cache; ``True`` if anything was there."""
    with _lock(sha256):
        folder, archive = cached_model_dir(sha256), cached_archive(sha256)
        found = folder.exists() or archive.exists()
        shutil.rmtree(folder, ignore_errors=True)
        archive.unlink(missing_ok=True)
    return found


def clean() -> int:
    """Remove everything in the cache; returns the number of bytes freed."""
    root = cache_dir()
    freed = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0
    for part in ("models", "archives", "downloads"):
        shutil.rmtree(root / part, ignore_errors=True)
    return freed


def model_card(sha256: str, url: str) -> str | None:
    """The model card (``README.md``) of a cached model, or read from a local archive without caching it."""
    card = cached_model_dir(sha256) / "README.md"
    if is_cached(sha256) and card.is_file():
        return card.read_text()
    path = Path(url.removeprefix("file://"))
    if is_remote(url) or not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.read("README.md").decode()
    except (KeyError, zipfile.BadZipFile, UnicodeDecodeError):
        return None
