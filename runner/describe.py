"""``cellzoo inspect``: what an input holds, what the checks find, and the ``annotate`` command that works.

Runs the same readers and checks as ``annotate`` (:mod:`runner.readers`, :func:`runner.query.check_query`)
and writes nothing. Where a check fails and an option fixes it (a counts layer, ``--species-map``,
``--genome``), the option is tried and, when it works, put into the suggested command.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import CellzooError, InputError
from runner.genes import ID_TYPE_NAMES, detect_species, id_type
from runner.options import CheckOptions, ModelOptions, ReadOptions
from runner.query import as_csr, candidates, check_query, counts_problem, describe_values, structure_problem
from runner.readers import H5AD, HDF5, READ_ERRORS, TENX_H5, detect_format, hdf5_tree, read_input, tenx_genomes

INSPECT_CELLS = 10_000  # h5ad files are opened backed and checked on their first cells
ID_WORDS = {"ensembl": "Ensembl ids", "symbol": "symbols"}


@dataclass
class Report:
    """The lines ``cellzoo inspect`` prints, the problems found, and the command that works (if any)."""

    rows: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    command: str = ""

    def add(self, label: str, text: str) -> None:
        self.rows.append((label, text))

    def lines(self) -> list[str]:
        out = [f"{label:<12}{text}" for label, text in self.rows]
        out += ["problems", *(f"  - {p}" for p in self.problems)] if self.problems else ["problems    none found"]
        out.append(f"command     {self.command}" if self.command else "command     none works yet: fix the problems")
        return out


def inspect_input(
    path: Path,
    options: ReadOptions,
    *,
    model_ref: str | None = None,
    checks: CheckOptions | None = None,
    source: ModelOptions | None = None,
) -> Report:
    """Describe ``path`` and check it against ``model_ref`` (when given), as ``annotate`` would: the same
    checks (:func:`runner.query.check_query`), trying the options that may fix a problem."""
    checks, source = checks or CheckOptions(), source or ModelOptions()
    report = Report()
    report.add("file", str(path))
    kind = detect_format(path, options)
    if kind == TENX_H5 and options.genome is None:
        genomes = tenx_genomes(path)
        if len(genomes) > 1:
            options = dataclasses.replace(options, genome=genomes[0])
            report.problems.append(
                f"several genomes: {', '.join(genomes)}; showing {genomes[0]} (choose with --genome)"
            )
    adata, found = read_input(path, dataclasses.replace(options, backed=kind == H5AD))
    n_cells = adata.n_obs
    if found.format.startswith(H5AD):
        try:
            adata = adata[: min(INSPECT_CELLS, n_cells)].to_memory()
        except READ_ERRORS as err:
            raise InputError(f"{path}: its first cells could not be read: {err}. Is the file complete?") from err
    report.add("format", found.format)
    report.add("shape", f"{n_cells} cells x {adata.n_vars} genes")
    report.add("orientation", found.orientation)
    if kind == HDF5:
        report.add("tree", "\n" + hdf5_tree(path))
    report.problems += found.notes
    for i, (where, x, _) in enumerate(candidates(adata)):
        damaged = "no matrix" if x is None else structure_problem(x)
        if damaged:
            report.add("" if i else "counts", f"{where}: {damaged}")
            continue
        matrix = as_csr(x)
        problem = counts_problem(matrix)
        report.add("" if i else "counts", f"{where}: {describe_values(matrix)}")
        if problem:
            report.add("", f"  not raw counts: {problem}")
    if n_cells > adata.n_obs:
        report.add("", f"(values checked on the first {adata.n_obs} of {n_cells} cells)")
    names = adata.var_names
    examples = ", ".join(map(str, names[:3]))
    columns = ", ".join(adata.var.columns) or "none"
    report.add("gene ids", f"{ID_WORDS[id_type(names)]} in var_names (e.g. {examples}); var columns: {columns}")
    species = detect_species(names)
    report.add("species", f"{species.name} ({species.evidence})")
    n_dup = int(adata.var_names.duplicated().sum())
    if n_dup:
        report.problems.append(f"{n_dup} duplicate gene names: summed when aligned to a model")
    if model_ref is None:
        report.command = _command(path, "MODEL", options, checks)
        return report
    return _check_with_model(report, adata, found, path, options, model_ref, checks, source)


def _check_with_model(report, adata, found, path, options, model_ref, checks: CheckOptions, source) -> Report:
    from runner.invoke import read_model_info
    from runner.sources import MemoryQuery

    info = read_model_info(source.resolve(model_ref).path)
    ids = ID_TYPE_NAMES.get(info.gene_id_type, info.gene_id_type)
    report.add("model", f"{info.name} ({info.species}, {ids}, {len(info.genes)} genes)")
    layers = [checks.counts_layer] if checks.counts_layer else [None, *adata.layers]
    attempts = [(layer, smap) for smap in dict.fromkeys([checks.species_map, True]) for layer in layers]
    first_error: CellzooError | None = None
    for layer, smap in attempts:
        attempt = dataclasses.replace(checks, counts_layer=layer, species_map=smap)
        try:
            query = MemoryQuery(adata, found, layer)
            checked = check_query(query, info, attempt)
            cells = checked.check_cells(query.obs_names)
        except CellzooError as err:
            first_error = first_error or err
            continue
        if first_error is not None:
            report.problems.append(f"as given: {first_error}")
        a = checked.alignment
        report.add(
            "overlap",
            f"{a.n_before} of {len(info.genes)} model genes before mapping, {a.n_present} after ({a.fraction:.1%})",
        )
        report.add("", f"names from {a.source}; counts from {query.counts}")
        report.problems += cells.warnings() + checked.genes.warnings
        report.command = _command(path, model_ref, options, attempt)
        return report
    report.problems.append(str(first_error))
    return report


def _command(path, model_ref, options: ReadOptions, checks: CheckOptions) -> str:
    from runner.annotate import default_output

    args = [
        "annotate",
        shlex.quote(str(path)),
        "-m",
        shlex.quote(model_ref),
        "-o",
        shlex.quote(str(default_output(path))),
    ]
    return " ".join(args + options.cli_args() + checks.cli_args())
