"""Writing a file so that it appears whole or not at all, and copying large files cheaply."""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A unique temporary path beside ``path``: renamed onto ``path`` when the block succeeds, removed otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private (0600); the file gets the usual permissions
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


COPY_CHUNK = 16 << 20  # bytes read and written at a time by copy_file
DIRECT_BLOCK = 4096  # O_DIRECT writes whole blocks of the file system (4096 covers 512-byte devices)


def copy_file(source: Path, target: Path) -> Path:
    """``target`` made a byte copy of ``source``, written around the page cache (``O_DIRECT``) where the
    file system takes it, else by :func:`shutil.copyfile`.

    A copy through the page cache has the kernel allocate and fill a page for every 4 kB written; for the
    multi-GB copy of a streamed query (:func:`runner.write.streamed_output`) that took a core for several
    seconds, beside the model. Measured on this ext4 disk, 2.3 GB: 4.7 s of kernel time through the page
    cache, 2.3 s with this copy (docs/design.md).
    """
    if not hasattr(os, "O_DIRECT"):  # not on Linux
        return Path(shutil.copyfile(source, target))
    try:
        _copy_direct(source, target)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
        return Path(shutil.copyfile(source, target))  # a file system without O_DIRECT
    return target


def _copy_direct(source: Path, target: Path) -> None:
    """The copy, a chunk at a time through one page-aligned buffer; the last block is padded with zeros,
    and the file cut back to the source's size."""
    with (
        open(source, "rb", buffering=0) as reader,
        mmap.mmap(-1, COPY_CHUNK) as buffer,  # page-aligned, as O_DIRECT needs
        memoryview(buffer) as view,
    ):
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o666)
        try:
            size = 0
            while filled := _fill(reader, view):
                whole = -(-filled // DIRECT_BLOCK) * DIRECT_BLOCK
                view[filled:whole] = bytes(whole - filled)
                written = 0
                while written < whole:
                    written += os.write(fd, view[written:whole])
                size += filled
            os.ftruncate(fd, size)
        finally:
            os.close(fd)


def _fill(reader, view: memoryview) -> int:
    """Read into ``view`` until it is full or the file ends; the bytes read."""
    filled = 0
    while filled < len(view) and (n := reader.readinto(view[filled:])):
        filled += n
    return filled
