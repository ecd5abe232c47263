"""Model archives: deterministic zips of MLflow model directories, and safe unpacking."""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from runner.errors import ModelError

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: the same content gives the same bytes
MAX_UNPACKED_BYTES = 2 * 1024**3  # refuse archives that unpack to more than this (zip bombs)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack_model_dir(model_dir: Path, archive: Path) -> tuple[str, int]:
    """Zip ``model_dir`` (files at the archive root, sorted, fixed timestamps and modes).

    Returns the archive's sha256 and size. The archive is written beside ``archive`` and renamed.
    """
    if not (model_dir / "MLmodel").is_file():
        raise ModelError(f"{model_dir} is not an MLflow model directory (no MLmodel file)")
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    tmp = archive.with_name(f".{archive.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for path in files:
                info = zipfile.ZipInfo(path.relative_to(model_dir).as_posix(), date_time=ZIP_EPOCH)
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes(), compresslevel=9)
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
    return sha256_file(archive), archive.stat().st_size


def safe_extract(archive: Path, target: Path, max_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Unpack a zip into ``target``, refusing absolute paths, ``..``, links and oversized content."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as err:
        raise ModelError(f"{archive} is not a zip archive ({err})") from err
    with zf:
        total = 0
        for info in zf.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts or "\\" in info.filename or ":" in info.filename:
                raise ModelError(f"refusing archive {archive.name}: unsafe entry path {info.filename!r}")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ModelError(f"refusing archive {archive.name}: entry {info.filename!r} is a link")
            total += info.file_size
            if total > max_bytes:
                raise ModelError(f"refusing archive {archive.name}: it unpacks to more than {max_bytes} bytes")
        try:
            zf.extractall(target)
        except (zipfile.BadZipFile, zlib.error) as err:  # a corrupt entry, or sizes that lie
            raise ModelError(f"refusing archive {archive.name}: {err}") from err
