"""The local model cache: content-addressed by sha256, verified before anything is unpacked or loaded.

Layout under :func:`cache_dir` (``$CELLZOO_CACHE_DIR``, else the platform cache folder)::

    CACHEDIR.TAG            the marker (https://bford.info/cachedir/): this folder is a cellzoo cache
    models/<sha256>/        an unpacked, verified model (renamed into place whole)
    archives/<sha256>.zip   the verified archive it was unpacked from, kept so that every load (and
                            `cellzoo models verify`) can re-hash it and compare every unpacked file
    downloads/<sha256>/     the download of a pinned archive in progress; a download cut short by a
                            signal or ``kill -9`` stays there and is resumed by the next run
    downloads/PID@HOST.*/   other temporary folders; those of runs that are gone are removed
    locks/<sha256>.lock     one process fetches a given model at a time; the others wait, then reuse it

A model counts as cached when both its folder (with an ``MLmodel``) and its archive are there. A
cached model needs no network. Nothing that failed its sha256 check is ever kept, and nothing is
loaded from the cache that differs from its archive. The cache only ever removes what it made: the
entries named by a sha256 (64 hex digits) or by a run, in a folder holding its marker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from runner.archive import safe_extract, sha256_file, zip_problem
from runner.errors import ModelError
from runner.files import is_stale, owner_tag, remove_stale

logger = logging.getLogger(__name__)

CACHE_ENV = "CELLZOO_CACHE_DIR"
REMOTE_SCHEMES = ("http://", "https://")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MARKER = "CACHEDIR.TAG"
MARKER_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by cellzoo (its model cache). See https://bford.info/cachedir/\n"
)


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


def is_marked() -> bool:
    """Whether the cache folder holds the marker that the cache writes (a folder of a user's is never cleaned)."""
    return (cache_dir() / MARKER).is_file()


def _part(name: str) -> Path:
    """A folder of the cache, made (with the marker beside it) when missing."""
    root = cache_dir()
    (root / name).mkdir(parents=True, exist_ok=True)
    if not is_marked():
        (root / MARKER).write_text(MARKER_TEXT)
    return root / name


def cached_sha256s() -> list[str]:
    """Every sha256 with a model folder or an archive in the cache (only the entries the cache names)."""
    if not is_marked():
        return []
    names = {p.name for p in (cache_dir() / "models").glob("*") if p.is_dir()}
    names |= {p.stem for p in (cache_dir() / "archives").glob("*.zip")}
    return sorted(n for n in names if SHA256.match(n))


@contextlib.contextmanager
def _lock(sha256: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold the lock of ``sha256``; yields whether it was taken (without ``wait``: ``False`` if it is held)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(_part("locks") / f"{sha256}.lock"))
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


@contextlib.contextmanager
def _staging(sha256: str | None = None) -> Iterator[Path]:
    """A temporary folder under ``downloads/``: ``downloads/<sha256>`` (its lock held) for a pinned download,
    which is kept for the next run to resume when a signal stops this one, else one named by this run.
    Folders of earlier runs that are gone are removed first. Removed on success or failure; a failure to
    write (a full disk) is a :class:`ModelError`."""
    root = _part("downloads")
    remove_stale(root / "*")
    if sha256 is None:
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f"{owner_tag()}."))
    else:
        tmp = root / sha256
        tmp.mkdir(exist_ok=True)
    try:
        yield tmp
    except KeyboardInterrupt:
        if sha256 is None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as err:  # e.g. a full disk
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"could not write the model into the cache {cache_dir()}: {err}") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


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
    with _lock(sha256):
        if is_cached(sha256):  # checked every time: what is loaded must be what was pinned
            problem = verify_cached(sha256).problem
            if not problem:
                return cached_model_dir(sha256)
            logger.warning("the cached model %s failed its check (%s): fetching it again", sha256[:12], problem)
            _remove(sha256)
        if offline and is_remote(url):
            raise ModelError(
                f"offline, and the model {url} (sha256 {sha256[:12]}…) is not in the cache {cache_dir()}; "
                "run `cellzoo models pull` for it while online, or drop --offline / CELLZOO_OFFLINE"
            )
        with _staging(sha256) as tmp:
            archive = _obtain(url, tmp / "archive.zip", size)
            seen = sha256_file(archive)
            if seen != sha256:
                got = archive.stat().st_size
                raise ModelError(
                    f"checksum mismatch for {url}: expected sha256 {sha256}, got {seen} ({got} bytes"
                    f"{f' of the {size} the registry states' if size else ''}); the archive was refused and "
                    "deleted. Either the transfer was damaged (try again) or these are not the bytes that were "
                    "pinned (ask the publisher, or pin the new hash)."
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
    shutil.rmtree(unpacked, ignore_errors=True)  # the tree of an unpack that a signal stopped
    if not zipfile.is_zipfile(archive):
        raise ModelError(f"{source} is not a zip archive: a model archive is a zip (`cellzoo build` writes one)")
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

    A file missing, changed or added (Python bytecode in ``__pycache__`` included: the runner never
    writes any there), or a link, is a problem. Run before every load of a cached model.
    """
    archive, folder = cached_archive(sha256), cached_model_dir(sha256)
    if not archive.is_file():
        return VerifyResult(sha256, "its archive is missing")
    seen = sha256_file(archive)
    if seen != sha256:
        return VerifyResult(sha256, f"its archive hashes to {seen}")
    if not folder.is_dir() or folder.is_symlink():
        return VerifyResult(sha256, "its unpacked folder is missing")
    problem = zip_problem(archive)
    if problem:
        return VerifyResult(sha256, f"its archive {problem}")
    expected = set()
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            expected.add(info.filename)
            path = folder / info.filename
            if path.is_symlink() or not path.is_file():
                return VerifyResult(sha256, f"{info.filename} is missing or not a plain file")
            if path.read_bytes() != zf.read(info):
                return VerifyResult(sha256, f"{info.filename} differs from the archive")
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_symlink() or (not path.is_dir() and relative.as_posix() not in expected):
            return VerifyResult(sha256, f"{relative} is not in the archive")
    return VerifyResult(sha256)


def _remove(sha256: str) -> bool:
    """Remove a model and its archive (the lock is held); ``True`` if anything was there."""
    folder, archive = cached_model_dir(sha256), cached_archive(sha256)
    found = folder.exists() or archive.exists()
    if folder.is_symlink():
        folder.unlink()
    shutil.rmtree(folder, ignore_errors=True)
    archive.unlink(missing_ok=True)
    return found


def evict(sha256: str) -> bool:
    """Remove a model and its archive from the cache; ``True`` if anything was there."""
    with _lock(sha256):
        return _remove(sha256)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def clean() -> tuple[int, int]:
    """Remove the cache's models, archives and downloads: only entries it named (a sha256, or a run), only in a
    folder holding its marker, and none that a run is using. Returns the bytes freed and the entries skipped
    because a run holds them."""
    if not is_marked():
        return 0, 0
    freed = skipped = 0
    for sha256 in cached_sha256s():
        with _lock(sha256, wait=False) as taken:
            if taken:
                freed += sum(_size(p) for p in (cached_model_dir(sha256), cached_archive(sha256)) if p.exists())
                _remove(sha256)
            skipped += not taken
    downloads = cache_dir() / "downloads"
    for path in sorted(downloads.glob("*")) if downloads.is_dir() else []:
        if SHA256.match(path.name):
            with _lock(path.name, wait=False) as taken:
                if taken:
                    freed += _size(path)
                    shutil.rmtree(path, ignore_errors=True)
                skipped += not taken
        elif is_stale(path.name):
            freed += _size(path)
            shutil.rmtree(path, ignore_errors=True)
    return freed, skipped


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
