"""The model-family interface: what ``cellzoo build`` expects of a family, declared and checked.

A family is a package ``model_zoo.<name>`` with two modules:

* ``train``: ``train(counts, genes, labels, params, batch=None) -> (trained, report)``; ``UNCERTAINTY``
  (what the uncertainty means, for the card); ``STORES`` (what the saved model holds: never the reference's
  expression); optionally ``QUERY_MAPPING`` (``"per_cell"``, the default, or ``"whole_query"`` when a cell's
  answer depends on the other cells, as ``scanvi``'s surgery does: the runner then maps the query in one call).
* ``pyfunc``: ``save_model(path, trained, labels, metadata)``, writing a standard MLflow model directory
  (:func:`model_zoo.pyfunc_io.save_family_model`) whose pyfunc is a :class:`model_zoo.annotator.ZooAnnotator`.

:func:`load_family` imports the two modules when a recipe needs them (the heavy libraries of a family, such
as scvi-tools, are imported only then) and refuses a family that lacks any of it, naming what is missing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

FAMILIES = ("linear", "xgboost", "scanvi")
# the libraries a family needs beyond cellzoo's own (its pip extra, named after the family)
EXTRA_MODULES = {"xgboost": ("xgboost",), "scanvi": ("torch", "scvi")}
QUERY_MAPPINGS = ("per_cell", "whole_query")


class FamilyError(Exception):
    """A family that does not provide the interface."""


@dataclass(frozen=True)
class Family:
    """A model family as ``cellzoo build`` uses it."""

    name: str
    train: ModuleType
    pyfunc: ModuleType

    @property
    def uncertainty(self) -> str:
        return self.train.UNCERTAINTY

    @property
    def stores(self) -> str:
        return self.train.STORES

    @property
    def query_mapping(self) -> str:
        return getattr(self.train, "QUERY_MAPPING", "per_cell")


def load_family(name: str) -> Family:
    """The family ``name`` (one of ``FAMILIES``), its interface checked."""
    if name not in FAMILIES:
        raise FamilyError(f"unknown family {name!r}; families: {', '.join(FAMILIES)}")
    for module in EXTRA_MODULES.get(name, ()):  # imported now (the build needs them), not at training's end
        try:
            importlib.import_module(module)
        except ImportError:
            raise FamilyError(
                f"family {name!r} needs {module}, which is not installed here: pip install 'cellzoo[{name}]'"
            ) from None
    train = importlib.import_module(f"model_zoo.{name}.train")
    pyfunc = importlib.import_module(f"model_zoo.{name}.pyfunc")
    missing = [f"train.{a}" for a in ("train", "UNCERTAINTY", "STORES") if not hasattr(train, a)]
    missing += [] if callable(getattr(pyfunc, "save_model", None)) else ["pyfunc.save_model"]
    if missing:
        raise FamilyError(f"family {name!r} lacks {', '.join(missing)} (the interface of model_zoo/family.py)")
    family = Family(name, train, pyfunc)
    if family.query_mapping not in QUERY_MAPPINGS:
        raise FamilyError(f"family {name!r}: QUERY_MAPPING must be one of {', '.join(QUERY_MAPPINGS)}")
    return family
