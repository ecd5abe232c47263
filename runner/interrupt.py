"""Stopping a run on a signal: SIGTERM (``kill``, Slurm's ``scancel``, ``docker stop``) is handled as SIGINT.

Both raise :class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread, so every ``with`` block on
the way out removes what it was writing. A signal can also arrive inside a library that swallows the
exception (h5py does, during a write): the signal is therefore also recorded, and :func:`check` raises
it again before anything is renamed into place (:func:`runner.files.atomic_path`).
"""

from __future__ import annotations

import signal

HANDLED = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []
_holding = [False]  # :func:`hold`


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; ``exit_code`` is the shell's 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def _raise(signum: int, frame: object) -> None:
    _received.append(signum)
    if not _holding[0]:
        raise Interrupted(signum)


def install() -> dict:
    """Handle SIGINT and SIGTERM by raising :class:`Interrupted` (call from the main thread of a command).
    Returns the handlers it replaced, for :func:`restore`."""
    _received.clear()
    _holding[0] = False
    return {signum: signal.signal(signum, _raise) for signum in HANDLED}


def restore(handlers: dict) -> None:
    """Put back the handlers :func:`install` replaced, and forget the signals received: a later run in this
    process (the Python API, a test) must not be stopped by a signal that ended an earlier one."""
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    _received.clear()
    _holding[0] = False


def hold() -> None:
    """Record the handled signals without raising them until :func:`release`: for the instructions between
    creating a file and the ``try`` that removes it. (Blocking the signal in this thread would not do: the
    kernel hands a signal to any thread that does not block it, and Python runs its handler in the main thread.)"""
    _holding[0] = True


def release(*, raise_held: bool = True) -> None:
    """Raise signals again (and, unless ``raise_held`` is false, one that arrived since :func:`install`)."""
    _holding[0] = False
    if raise_held:
        check()


def check() -> None:
    """Raise :class:`Interrupted` again if a signal arrived, even one that a library swallowed."""
    if _received:
        raise Interrupted(_received[-1])
