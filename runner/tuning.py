"""How an ``annotate`` process uses the machine: memory, garbage collection and threads.

An annotation run is one process that imports much, streams large blocks of cells, and exits. Each
setting here was measured on the scale benchmark (docs/benchmarks.md; 2 cores, 300,000 cells, query
read from disk) and is recorded in docs/design.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
KEEP_FREED_BYTES = 2**31 - 1  # freed heap memory given back to the kernel only above this (mallopt takes an int)


def one_shot_process() -> None:
    """Tune this process for one command that runs and exits (``annotate``, ``inspect``)."""
    _few_garbage_collections()
    _reuse_freed_memory()


def _few_garbage_collections() -> None:
    """Python's cyclic garbage collector tuned for a command that imports much and runs once: a young
    collection every 100,000 allocations instead of 700 (the imports of MLflow, scikit-learn and anndata
    set off hundreds of them), and none of the long-lived objects scanned again at exit. Cycles are still
    collected. Measured: a 559-cell run 3.8 -> 2.7 s, 300,000 cells 12-16 -> 11 s, the same peak memory."""
    import atexit
    import gc

    gc.set_threshold(100_000, 50, 100)
    atexit.unregister(gc.freeze)  # once, however many commands run in this process
    atexit.register(gc.freeze)


def _reuse_freed_memory() -> None:
    """glibc's malloc serves every block from its heap and keeps what is freed for the next block.

    By default each array above 32 MB (a block of 10,000 cells holds several) is a fresh ``mmap`` that
    the kernel zeroes page by page on first touch and unmaps when freed: for every block, again. Kept,
    the memory of one block is reused by the next. Peak memory is unchanged (what the run held at its
    largest); it is released at exit. A no-op where the C library has no ``mallopt`` (macOS, musl).
    Measured at 300,000 cells: kernel time 10.3 -> 6.8 s, wall 13.8 -> 12.0 s.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(M_MMAP_MAX, 0)
    mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def model_threads() -> Iterator[int]:
    """The thread pools of the libraries the model uses (BLAS, OpenMP: numpy, scikit-learn, xgboost,
    torch) limited to one core fewer than the process may use, and at least one: the next block of
    cells is read, checked and aligned on a thread of its own meanwhile, and the pools' workers spin
    while they wait, so a pool as large as the machine fights the reader for its core.
    Measured on 2 cores: 300,000 cells with `pbmc` 12.2 -> 10.2 s; Kang 2018 with `pbmc-scanvi` 12.0 -> 10.4 s.
    Yields the limit."""
    from threadpoolctl import threadpool_limits

    limit = max(1, usable_cores() - 1)
    with threadpool_limits(limits=limit):
        yield limit
