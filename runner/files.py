"""Writing a file so that it appears whole or not at all, claiming output names, and copying large files cheaply.

Temporary files and folders are named with their owner (``PID@HOST``), so that a later run can tell the
leftovers of a killed run (``kill -9``, a power cut) from those of a run still going, and remove them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import mmap
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from runner import interrupt
from runner.errors import UsageError

# the end of the name of a temporary file or folder: PID@HOST.RANDOM[.tmp]
OWNER = re.compile(r"(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]*)\.\w+(?:\.tmp)?$")
PARTIAL = ".partial."  # :func:`atomic_folder`'s temporary folders: .partial.PID@HOST.RANDOM.tmp


def owner_tag() -> str:
    """``PID@HOST`` of this process, as it is written into the names of its temporary files."""
    return f"{os.getpid()}@{re.sub(r'[^A-Za-z0-9-]', '-', socket.gethostname())}"


def is_stale(name: str) -> bool:
    """Whether a temporary file or folder named with :func:`owner_tag` was left by a process that is gone.

    Only a process of this host can be checked; a name without an owner is never stale.
    """
    found = OWNER.search(name)
    if found is None or found["host"] != owner_tag().partition("@")[2]:
        return False
    try:
        os.kill(int(found["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale(pattern: Path) -> list[Path]:
    """Remove the files and folders matching ``pattern`` (a glob) that :func:`is_stale` says were left behind."""
    removed = []
    for name in glob.glob(str(pattern), include_hidden=True):
        path = Path(name)
        if is_stale(path.name):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def temporary_prefix(path: Path) -> str:
    """The start of the names of :func:`atomic_path`'s temporary files for ``path`` (they end with ``.tmp``)."""
    return f".{path.name}."


def is_temporary_of(candidate: Path, path: Path) -> bool:
    """Whether ``candidate`` is named like a temporary file of ``path`` beside it, which a later run may remove."""
    name = candidate.name
    named = name.startswith(temporary_prefix(path)) and name.endswith(".tmp")
    return named and same_file(candidate.parent, path.parent)


def check_writable_path(flag: str, path: Path, *, folder: bool = False) -> None:
    """Refuse, before anything runs, an output path that names something other than a file (``folder``: a
    folder) -- a device such as /dev/null, a pipe: replacing it would destroy it -- or lies below a file."""
    kind, is_kind = ("folder", Path.is_dir) if folder else ("regular file", Path.is_file)
    try:
        if path.exists() and not is_kind(path):
            raise UsageError(f"{flag} {path} exists and is not a {kind}; give the path of a {kind.split()[-1]}")
        parent = next((p for p in path.parents if p.exists()), None)
    except OSError as err:  # a name too long, a folder that cannot be searched
        raise UsageError(f"{flag} {path}: {err.strerror or err}; choose another path") from err
    if parent is not None and not parent.is_dir():
        raise UsageError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A unique temporary path beside ``path``: renamed onto ``path`` when the block succeeds, removed otherwise.

    Temporary files of ``path`` left by killed runs are removed first. A signal received during the block
    (:mod:`runner.interrupt`) stops the rename, even if a library swallowed it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = temporary_prefix(path)
    remove_stale(path.parent / f"{glob.escape(prefix)}*.tmp")
    tmp = None
    interrupt.hold()  # a signal raised right after mkstemp, before ``tmp`` is set, would leave the file behind
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{prefix}{owner_tag()}.", suffix=".tmp")
        tmp = Path(name)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private (0600); the file gets the usual permissions
        finally:
            os.close(fd)
        interrupt.release()  # a signal that arrived meanwhile is raised here, inside the try
        yield tmp
        interrupt.check()
        os.replace(tmp, path)
    finally:
        interrupt.hold()  # a signal now would leave the file behind: it is recorded, raised by the run's check
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        interrupt.release(raise_held=False)


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder inside the folder ``path`` (made if needed): when the block succeeds, its entries
    replace those of the same names in ``path`` (its other entries are kept), each by a rename within ``path``
    (so a mount point, or a link to a folder on another file system, works); removed otherwise, with the folders
    made for it. Temporary folders left there by killed runs are removed first."""
    made = missing_folders(path)
    path.mkdir(parents=True, exist_ok=True)
    remove_stale(path / f"{PARTIAL}*.tmp")
    tmp, placed = None, False
    interrupt.hold()  # as in atomic_path: the folder must be known before a signal is raised
    try:
        tmp = Path(tempfile.mkdtemp(dir=path, prefix=f"{PARTIAL}{owner_tag()}.", suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_umask())
        interrupt.release()
        yield tmp
        interrupt.check()
        interrupt.hold()  # placing the entries takes a few renames: a signal is raised once they are in place
        for entry in sorted(tmp.iterdir()):
            target = path / entry.name
            if target.is_dir() and not target.is_symlink():
                target.rename(tmp / f"{entry.name}.replaced")  # a folder cannot be renamed onto a full one
            os.replace(entry, target)
        placed = True
    finally:
        interrupt.hold()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not placed:
            remove_empty(made)
        interrupt.release(raise_held=False)  # a signal held meanwhile is raised by the command's check


class Outputs:
    """The output files of one run: their folders made, their names claimed, and removed if the run fails.

    Without ``overwrite`` an existing output is refused at once, and each name is claimed by :meth:`claim`,
    created (``O_EXCL``) as an empty file held with ``flock`` until the result replaces it: of several runs
    writing one path, one wins, the others stop with "exists". An empty file whose lock nobody holds is the
    claim of a killed run and is taken over. :meth:`close` removes, unless :meth:`keep` was called, every
    file this run wrote or claimed (if still the same file) and every folder it made (if empty).
    """

    def __init__(self, paths: list[Path | None], *, overwrite: bool) -> None:
        self.paths = [p for p in paths if p is not None]
        self.overwrite = overwrite
        self.mine: dict[Path, tuple[int, int]] = {}  # path -> (device, inode) of the file this run put there
        self.locks: list[int] = []
        self.folders: list[Path] = []
        self.kept = False
        for path in self.paths if not overwrite else []:
            if (path.exists() or path.is_symlink()) and not _abandoned_claim(path):
                raise _exists(path)

    def claim(self) -> None:
        for path in self.paths:
            missing = missing_folders(path.parent)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.folders += missing
                try_writing_in(path.parent, temporary_prefix(path))  # files, and a temporary name as long as the run's
                if not self.overwrite:
                    self._claim(path)
            except OSError as err:  # a read-only folder, a name too long, a file system that refuses
                raise UsageError(f"cannot write {path}: {err.strerror or err}; choose another path") from err

    def _claim(self, path: Path) -> None:
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                if not _abandoned_claim(path):
                    raise _exists(path) from None
                path.unlink(missing_ok=True)
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.locks.append(fd)
            self.written(path)
            return
        raise _exists(path)

    def written(self, path: Path) -> None:
        """Record that this run has just written ``path`` (removed again if the run fails)."""
        info = os.stat(path)
        self.mine[path] = (info.st_dev, info.st_ino)

    def keep(self) -> None:
        self.kept = True

    def close(self) -> None:
        if not self.kept:
            for path, identity in self.mine.items():
                with contextlib.suppress(OSError):
                    info = os.stat(path)
                    if (info.st_dev, info.st_ino) == identity:
                        path.unlink()
            remove_empty(self.folders)
        for fd in self.locks:
            os.close(fd)
        self.locks.clear()


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those above it that do not exist yet (what making it makes), deepest first."""
    return [p for p in [folder, *folder.parents] if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` that are empty, deepest first (those a failed run made)."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


def try_writing_in(folder: Path, prefix: str = PARTIAL) -> None:
    """Create and remove a temporary file in ``folder``, named as this module names its own (``prefix``): a folder
    that refuses files (with ``--overwrite`` no output name is claimed), or an output name that fits but whose
    temporary name does not, would otherwise fail only after the run."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=f"{prefix}{owner_tag()}.", suffix=".tmp")
    os.close(fd)
    os.unlink(name)


def _exists(path: Path) -> UsageError:
    return UsageError(f"output {path} exists; pass --overwrite to replace it, or choose another path")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (the same path, a link to it, or a hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _abandoned_claim(path: Path) -> bool:
    """Whether ``path`` is an empty file that no run holds (the claim of a killed run)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size or not os.path.isfile(path):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    finally:
        os.close(fd)


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
