"""A run's options, declared once: how to read the query, how to check it, how to run the model, where
the model comes from.

Each option is one field of a frozen dataclass, declared with :func:`option` (its default, what it
means, its range or choices). The declaration is everything: construction validates every field
(:class:`runner.errors.UsageError`, naming the command-line flag), ``provenance()`` records them in
``uns[K]['params']``, ``cli_args()`` writes the flags that reproduce them (``cellzoo inspect``'s
command), and :func:`split_options` routes the keyword arguments of :func:`runner.api.annotate` to
them. Adding an option is one line here (and, for the command line, its flag in :mod:`runner.cli`).

This module imports nothing heavy: the CLI's ``--help`` reads its defaults and help texts.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from runner.envs import ENV_MANAGERS
from runner.errors import UsageError

CELLS_BY_GENES = "cells-by-genes"
GENES_BY_CELLS = "genes-by-cells"
ORIENTATIONS = (CELLS_BY_GENES, GENES_BY_CELLS)


def option(
    default: Any,
    help: str,
    *,
    within: tuple[float | None, float | None] | None = None,
    choices: tuple[str, ...] | None = None,
    flag: str | None = "",
) -> Any:
    """A declared option: ``default``; ``help`` (the CLI's help text and the API's docs); a closed range
    ``within=(low, high)`` (``None``: unbounded) or ``choices`` (``None`` is always allowed where it is the
    default); ``flag``: its command-line flag (default ``--name-with-dashes``; ``None``: not on the command line)."""
    return field(default=default, metadata={"help": help, "within": within, "choices": choices, "flag": flag})


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of an option field (``--on/--off`` for a pair of switches)."""
    return f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"


class Options:
    """Validation, provenance and command-line arguments of an option dataclass, from its declarations."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            _validate(f, getattr(self, f.name))

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of option ``name`` (for the CLI)."""
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)  # type: ignore[arg-type]

    def provenance(self) -> dict[str, Any]:
        """The options as ``uns`` stores them (``None`` as ``''``, paths as strings, sequences as lists)."""
        return {f.name: _storable(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    def cli_args(self) -> list[str]:
        """The command-line flags that reproduce these options (defaults left out)."""
        args = []
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.metadata["flag"] is None or value == f.default:
                continue
            if isinstance(value, bool):  # a switch, or a pair of switches such as --backed/--in-memory
                on, _, off = flag_of(f).partition("/")
                args += [on] if value else [off] if off else []
            elif value is not None:
                args.append(f"{flag_of(f)} {shlex.quote(str(value))}")
        return args


def _validate(f: dataclasses.Field, value: Any) -> None:
    flag = flag_of(f)
    if value is None and f.default is None:
        return
    if isinstance(f.default, bool):
        if not isinstance(value, bool):
            raise UsageError(f"{flag} is a yes/no option (True or False), got {value!r}")
        return
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"{flag} must be one of {', '.join(choices)}, got {value!r}{hint}")
    within = f.metadata.get("within")
    if within is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:  # NaN != NaN
        raise UsageError(f"{flag} must be a number, got {value!r}")
    low, high = within
    if isinstance(f.default, int) and not isinstance(value, numbers.Integral):
        raise UsageError(f"{flag} must be a whole number, got {value!r}")
    one_sided = high is None or low is None or isinstance(f.default, int)  # a count: its upper bound is technical
    if low is not None and value < low and one_sided:
        raise UsageError(f"{flag} must be at least {low}, got {value}")
    if high is not None and value > high and one_sided:
        raise UsageError(f"{flag} must be at most {high:,}, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise UsageError(f"{flag} must be within [{low:g}, {high:g}], got {value}")


def _storable(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_storable(v) for v in value]
    return value


@dataclass(frozen=True)
class ReadOptions(Options):
    """How to read an input file (:func:`runner.readers.read_input`)."""

    genome: str | None = option(None, "10x HDF5 with several genomes: the one to read.")
    orientation: str | None = option(
        None, "Tables and HDF5: cells-by-genes or genes-by-cells [default: detected].", choices=ORIENTATIONS
    )
    transpose: bool = option(False, "Flip the detected orientation of a table or HDF5 matrix.")
    matrix_key: str | None = option(None, "Other HDF5: path of the matrix (see `cellzoo inspect`).")
    obs_key: str | None = option(None, "Other HDF5: path of the cell names.")
    var_key: str | None = option(None, "Other HDF5: path of the gene names.")
    backed: bool = option(False, "h5ad: open backed (X stays on disk); `cellzoo inspect` reads so.", flag=None)
    external_links: bool = option(
        False,
        "HDF5: follow external links and virtual datasets to other files (refused otherwise: a file could read "
        "another's matrix).",
        flag="--allow-external-links",
    )


DEFAULT_MIN_GENE_OVERLAP = 0.2
MAX_BATCH_SIZE = 2**31 - 1  # a block's cell count is recorded in the output's provenance (an HDF5 integer)


@dataclass(frozen=True)
class CheckOptions(Options):
    """Where the query's counts and gene names are, and how much of the model's panel it must have
    (:func:`runner.query.check_query`: the checks of ``annotate``, ``cellzoo inspect`` and the API)."""

    counts_layer: str | None = option(None, "Layer holding the raw counts [default: raw.X, else X].")
    gene_column: str | None = option(
        None,
        "var column with the gene names (var_names: the names themselves) [default: the one that matches the "
        "most model genes].",
    )
    species_map: bool = option(
        False, "Map genes of another species (human <-> mouse) to the model's by symbol; see README."
    )
    min_gene_overlap: float = option(
        DEFAULT_MIN_GENE_OVERLAP,
        "Refuse queries with fewer of the model's genes than this fraction.",
        within=(0.0, 1.0),
    )


@dataclass(frozen=True)
class RunOptions(Options):
    """How the model is run over the query, and how its answers are turned into labels."""

    batch_size: int = option(10_000, "Cells read and annotated at a time.", within=(1, MAX_BATCH_SIZE))
    unassigned_threshold: float = option(
        0.5,
        "An answer needs a probability of at least 1 - this (its class's, or with back-off the summed probability "
        "of a common ancestor's classes); below that a cell is 'Unassigned'.",
        within=(0.0, 1.0),
    )
    novelty_threshold: float = option(
        1.0,
        "Cells whose novelty score is above this are 'Unassigned' (1.0: about 1% of cells like the reference's "
        "pass it; inf: off).",
        within=(1e-9, None),
    )
    backoff: bool = option(
        True,
        "Answer with the most specific common Cell Ontology ancestor when the finest classes are in doubt.",
        flag="--backoff/--no-backoff",
    )
    majority_voting: bool = option(
        False,
        "Also give every cell the most frequent answer of its over-cluster in the model's embedding "
        "(CellTypist's majority voting; written as K_majority_voting beside the per-cell answer).",
    )
    env_manager: str = option(
        "auto",
        "Where the model runs: auto (in-process when this interpreter meets the model's pins, else its own "
        "environment), local, uv, virtualenv.",
        choices=ENV_MANAGERS,
    )
    device: str | None = option(None, "Device for models that take one (xgboost, scanvi): cpu or cuda.")
    scheduler: str | None = option(
        None,
        "Address of a dask.distributed scheduler (tcp://HOST:PORT): blocks of cells are annotated on its workers "
        "(pip install 'cellzoo[dask]'; see README, Scale).",
    )
    backed: bool | None = option(
        None,
        "h5ad: stream the matrix from disk a batch at a time, or read it whole [default: stream from 100,000 cells].",
        flag="--backed/--in-memory",
    )


@dataclass(frozen=True)
class ModelOptions(Options):
    """Where a model may come from (:func:`runner.resolve.resolve_model_ref`)."""

    trust: bool = option(False, "Load a model that is neither in a registry nor pinned by sha256 (its code will run).")
    offline: bool = option(False, "Use no network: only cached or local models.")
    tracking_uri: str | None = option(None, "MLflow tracking server for models:/ and runs:/ references.")
    registries: tuple[Path, ...] = option(
        (), "User registry files layered over the zoo's (also $CELLZOO_REGISTRIES).", flag="--registry"
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "registries", tuple(Path(p) for p in self.registries or ()))
        super().__post_init__()

    def resolve(self, reference: str):
        """:func:`runner.resolve.resolve_model_ref` with these options."""
        from runner.resolve import resolve_model_ref

        return resolve_model_ref(
            reference,
            trust=self.trust,
            offline=self.offline,
            tracking_uri=self.tracking_uri,
            registries=self.registries,
        )


OPTION_CLASSES = (CheckOptions, RunOptions, ModelOptions, ReadOptions)


def split_options(kwargs: dict[str, Any], classes: tuple[type[Options], ...] = OPTION_CLASSES) -> list[Options]:
    """Keyword arguments routed by name to one instance of each class in ``classes`` (validated); an unknown
    name is refused with the valid ones and the closest match."""
    names = {f.name: cls for cls in classes for f in fields(cls)}  # type: ignore[arg-type]
    unknown = [k for k in kwargs if k not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown option {unknown[0]!r}{hint}; options: {', '.join(names)}")
    return [cls(**{k: v for k, v in kwargs.items() if names[k] is cls}) for cls in classes]


def describe_options(classes: tuple[type[Options], ...] = OPTION_CLASSES, skip: tuple[str, ...] = ()) -> str:
    """The options of ``classes`` (but ``skip``) as the entries of a numpy docstring's parameter list."""
    lines = []
    for cls in classes:
        for f in (f for f in fields(cls) if f.name not in skip):  # type: ignore[arg-type]
            lines += [f"{f.name}", f"    {f.metadata['help']} Default: {f.default!r} ({cls.__name__})."]
    return "\n".join(lines)
