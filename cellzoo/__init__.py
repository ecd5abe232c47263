"""cellzoo in Python: annotate an AnnData in a notebook with a zoo model.

    import cellzoo
    adata = cellzoo.read("kang2018_pbmc.h5ad")      # any input `annotate` reads
    cellzoo.annotate(adata, "pbmc")                  # in place, as scanpy does; copy=True returns a copy
    cellzoo.list_models()                            # the registries' models
    model = cellzoo.load_model("pbmc@1.2.0")         # genes, labels, card, metadata

The implementation lives in the project's ``runner`` package (:mod:`runner.api`), the same code as the
``annotate`` and ``cellzoo`` commands. ``import cellzoo`` is cheap: each name is imported when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from runner import __version__

_EXPORTS = {
    "annotate": "runner.api",
    "read": "runner.api",
    "load_model": "runner.api",
    "resolve_model": "runner.api",
    "list_models": "runner.api",
    "annotate_spark": "runner.spark",
    "Model": "runner.api",
    "CheckOptions": "runner.options",
    "RunOptions": "runner.options",
    "ModelOptions": "runner.options",
    "ReadOptions": "runner.options",
    "CellzooError": "runner.errors",
    "UsageError": "runner.errors",
    "InputError": "runner.errors",
    "ModelError": "runner.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cellzoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
