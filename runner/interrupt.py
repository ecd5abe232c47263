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


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; ``exit_code`` is the shell's 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def _raise(signum: int, frame: object) -> None:
    _received.append(signum)
    raise Interrupted(signum)


def install() -> dict:
    """Handle SIGINT and SIGTERM by raising :class:`Interrupted` (call from the main thread of a command).
    Returns the handlers it replaced, for :func:`restore`."""
    _received.clear()
    return {signum: signal.signal(signum, _raise) for signum in HANDLED}


def restore(handlers: dict) -> None:
    """Put back the handlers :func:`install` replaced, and forget the signals received: a later run in this
    process (the Python API, a test) must not be stopped by a signal that ended an earlier one."""
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    _received.clear()


def check() -> None:
    """Raise :class:`Interrupted` again if a signal arrived, even one that a library swallowed."""
    if _received:
        raise Interrupted(_received[-1])
