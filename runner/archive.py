"""Model archives: deterministic zips of MLflow model directories, and safe unpacking."""

from __future__ import annotations

import hashlib
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from runner.errors import CellzooError, ModelError
from runner.files import atomic_path

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: the same content gives the same bytes
MAX_UNPACKED_BYTES = 2 * 1024**3  # refuse archives that unpack to more than this (zip bombs)
MAX_DEPTH = 64  # folders an entry may be nested in (a model is a few deep; thousands exhaust recursion)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def pack_model_dir(model_dir: Path, archive: Path) -> tuple[str, int]:
    """Zip ``model_dir`` (files at the archive root, sorted, fixed timestamps and modes).

    Returns the archive's sha256 and size. The archive is written beside ``archive`` and renamed.
    """
    if not (model_dir / "MLmodel").is_file():
        raise ModelError(f"{model_dir} is not an MLflow model directory (no MLmodel file)")
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(model_dir).as_posix(), date_time=ZIP_EPOCH)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes(), compresslevel=9)
    return sha256_file(archive), archive.stat().st_size


def _members(archive: Path, error: type[CellzooError]) -> list[tuple[str, int, bool]]:
    """(name, size, is a link or not a plain file/folder) of each entry of a zip or tar archive."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                return [(i.filename, i.file_size, stat.S_ISLNK(i.external_attr >> 16)) for i in zf.infolist()]
        if not tarfile.is_tarfile(archive):
            raise error(f"{archive} is not a readable zip or tar archive")
        with tarfile.open(archive) as tf:
            return [(m.name, m.size, not (m.isfile() or m.isdir())) for m in tf.getmembers()]
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as err:
        raise error(f"{archive} is not a readable zip or tar archive ({err})") from err


def zip_problem(archive: Path) -> str:
    """What makes ``archive`` unfit as a kept model archive ('' when nothing): not a zip, or an entry twice."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [i.filename for i in zf.infolist()]
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"is not a readable zip archive ({err})"
    twice = _duplicate(names)
    return f"holds the entry {twice!r} more than once" if twice else ""


def _duplicate(names: list[str]) -> str:
    """The first entry name that occurs twice ('' if none); ``a/`` and ``./a`` are ``a``."""
    seen: set[str] = set()
    for name in names:
        key = PurePosixPath(name).as_posix()
        if key in seen:
            return name
        seen.add(key)
    return ""


def safe_extract(
    archive: Path, target: Path, max_bytes: int = MAX_UNPACKED_BYTES, error: type[CellzooError] = ModelError
) -> None:
    """Unpack a zip or tar archive into ``target``, refusing absolute paths, ``..``, links and oversized content.

    Every entry is checked before anything is written (entries twice, or nested more than
    :data:`MAX_DEPTH` folders deep, are refused too); ``error`` is the type raised (a model archive
    raises :class:`ModelError`, a query archive :class:`InputError`).
    """
    total = 0
    members = _members(archive, error)
    twice = _duplicate([filename for filename, _, _ in members])
    if twice:
        raise error(f"refusing archive {archive.name}: the entry {twice[:200]!r} occurs more than once")
    for filename, size, is_link in members:
        name = PurePosixPath(filename)
        if len(name.parts) > MAX_DEPTH:
            raise error(f"refusing archive {archive.name}: an entry is nested {len(name.parts)} folders deep")
        if name.is_absolute() or ".." in name.parts or "\\" in filename or ":" in filename:
            raise error(f"refusing archive {archive.name}: unsafe entry path {filename!r}")
        if is_link:
            raise error(f"refusing archive {archive.name}: entry {filename!r} is a link or a special file")
        total += size
        if total > max_bytes:
            raise error(f"refusing archive {archive.name}: it unpacks to more than {max_bytes} bytes")
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(target)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(target, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise error(f"{archive} could not be unpacked ({err}); it may be truncated") from err
