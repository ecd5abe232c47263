"""The command-line interfaces: ``annotate`` and ``cellzoo``.

Library code raises :class:`runner.errors.CellzooError`; only this module turns errors into a message
on stderr and an exit code (1: failed run, 2: bad usage). Heavy imports happen inside commands, so
``--help`` is fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from runner import __version__
from runner.errors import CellzooError
from runner.options import CheckOptions, ModelOptions, Options, ReadOptions, RunOptions
from runner.tuning import one_shot_process

annotate_app = typer.Typer(
    add_completion=False,
    help="Annotate the cells of a query (h5ad, loom, 10x h5 / folder / zip, csv/tsv, HDF5) with a zoo model.",
)
cellzoo_app = typer.Typer(add_completion=False, no_args_is_help=True, help="cellzoo: the model zoo and its tools.")
models_app = typer.Typer(no_args_is_help=True, help="The models of the registry.")
cache_app = typer.Typer(no_args_is_help=True, help="The local model cache.")
envs_app = typer.Typer(no_args_is_help=True, help="The models' own environments (built once, reused).")
cellzoo_app.add_typer(models_app, name="models")
cellzoo_app.add_typer(cache_app, name="cache")
cellzoo_app.add_typer(envs_app, name="envs")

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Say more (debug logging).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors (libraries' too).")]


def _flag(cls: type[Options], name: str, *names: str) -> Any:
    """The typer option of a declared option (:mod:`runner.options`): its help text, and its flag names."""
    return typer.Option(*names, help=cls.help(name).replace("[default", "\\[default"))


Genome = Annotated[str | None, _flag(ReadOptions, "genome")]
Orientation = Annotated[str | None, _flag(ReadOptions, "orientation")]
Transpose = Annotated[bool, _flag(ReadOptions, "transpose")]
MatrixKey = Annotated[str | None, _flag(ReadOptions, "matrix_key")]
ObsKey = Annotated[str | None, _flag(ReadOptions, "obs_key")]
VarKey = Annotated[str | None, _flag(ReadOptions, "var_key")]
ExternalLinks = Annotated[bool, _flag(ReadOptions, "external_links", "--allow-external-links")]
CountsLayer = Annotated[str | None, _flag(CheckOptions, "counts_layer")]
GeneColumn = Annotated[str | None, _flag(CheckOptions, "gene_column")]
MinGeneOverlap = Annotated[float, _flag(CheckOptions, "min_gene_overlap")]
SpeciesMap = Annotated[bool, _flag(CheckOptions, "species_map")]
Registries = Annotated[list[Path] | None, _flag(ModelOptions, "registries", "--registry")]
Trust = Annotated[bool, _flag(ModelOptions, "trust")]
ReportDir = Annotated[
    Path | None,
    typer.Option("--report", help="Also write an HTML report with its figures into this folder (new, or --overwrite)."),
]
Offline = Annotated[bool, typer.Option(envvar="CELLZOO_OFFLINE", help=ModelOptions.help("offline"))]
TrackingUri = Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help=ModelOptions.help("tracking_uri"))]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cellzoo {__version__}")
        raise typer.Exit()


Version = Annotated[
    bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
]


def _options(cls: type[Options], values: dict[str, Any]) -> Any:
    """An option object from a command's parameters of the same names (those that are command-line flags)."""
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.metadata["flag"] is not None and f.name in values})


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    for noisy in ("mlflow", "numba", "h5py", "urllib3", "filelock", "anndata"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # libraries that set up their own loggers when imported (scvi-tools, lightning) are quietened here too
    logging.disable(logging.INFO if quiet else logging.NOTSET)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # fail in seconds, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    if quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")


def _fail(err: CellzooError) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(err.exit_code)


def _log_unraisable(unraisable) -> None:
    """An exception a library could not raise (e.g. h5py closing a file on a full disk): logged for -v, not
    printed as a traceback (the error that follows says what failed)."""
    logging.getLogger(__name__).debug("ignored in %r: %s", unraisable.object, unraisable.exc_value)


def _log_printed(kind: type, value: BaseException, tb: object) -> None:
    """An exception a C extension printed instead of raising (Cython's ``noexcept`` functions do), as above."""
    logging.getLogger(__name__).debug("ignored in a library: %s: %s", kind.__name__, value)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the runner's errors into a one-line message and the exit code (no traceback). SIGTERM is handled
    as SIGINT: both stop the command, every temporary file is removed, and it exits with 128 + the signal."""
    from runner import interrupt
    from runner.errors import OutputError

    handlers = interrupt.install()
    hooks = sys.unraisablehook, sys.excepthook
    sys.unraisablehook = _log_unraisable
    sys.excepthook = _log_printed  # what C extensions print (PyErr_Print) while this command runs
    try:
        yield
        interrupt.check()
    except OutputError as err:
        # a write that failed (a full disk) can leave HDF5 files open inside h5py, and HDF5 crashes flushing
        # them when the interpreter exits (a segfault after the message): this process ends here instead
        typer.echo(f"error: {' '.join(str(err).split())}", err=True)  # HDF5's messages span lines
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(err.exit_code)
    except CellzooError as err:
        raise _fail(err) from None
    except KeyboardInterrupt as err:
        stopped = err if isinstance(err, interrupt.Interrupted) else interrupt.Interrupted(interrupt.HANDLED[0])
        typer.echo(f"error: stopped by {stopped}; what it was writing was removed", err=True)
        raise typer.Exit(stopped.exit_code) from None
    finally:
        sys.unraisablehook, sys.excepthook = hooks
        interrupt.restore(handlers)


@contextlib.contextmanager
def _running() -> Iterator[None]:
    """A command's run: the runner's errors as a message and exit code, and whatever the libraries print while
    it runs (scvi-tools' log lines go to stdout) sent to stderr, so that stdout holds the command's results
    alone (printed after)."""
    with _user_errors(), contextlib.redirect_stdout(sys.stderr):
        yield


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@cellzoo_app.callback()
def cellzoo_main(version: Version = False) -> None:
    """cellzoo: the model zoo and its tools."""


@annotate_app.command()
def annotate(
    input: Annotated[
        Path, typer.Argument(help="Query: .h5ad, .zarr, .loom, 10x .h5 / folder / .zip / .tar.gz, table, HDF5.")
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="NAME, NAME@VERSION, URL#sha256=HEX, URL, model dir or zip, models:/NAME/N."
        ),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output .h5ad \\[default: INPUT.annotated.h5ad].")
    ] = None,
    key_added: Annotated[str | None, typer.Option(help="Key K of the results \\[default: the model's name].")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file, result keys and report.")] = False,
    table: Annotated[
        Path | None, typer.Option(help="Also write one row per cell to a .csv, .tsv or .parquet table.")
    ] = None,
    report: ReportDir = None,
    counts_layer: CountsLayer = None,
    gene_column: GeneColumn = None,
    species_map: SpeciesMap = False,
    genome: Genome = None,
    orientation: Orientation = None,
    transpose: Transpose = False,
    matrix_key: MatrixKey = None,
    obs_key: ObsKey = None,
    var_key: VarKey = None,
    external_links: ExternalLinks = False,
    batch_size: Annotated[int, _flag(RunOptions, "batch_size")] = RunOptions.batch_size,
    backed: Annotated[bool | None, _flag(RunOptions, "backed", "--backed/--in-memory")] = None,
    unassigned_threshold: Annotated[float, _flag(RunOptions, "unassigned_threshold")] = RunOptions.unassigned_threshold,
    novelty_threshold: Annotated[float, _flag(RunOptions, "novelty_threshold")] = RunOptions.novelty_threshold,
    backoff: Annotated[bool, _flag(RunOptions, "backoff", "--backoff/--no-backoff")] = RunOptions.backoff,
    majority_voting: Annotated[bool, _flag(RunOptions, "majority_voting")] = False,
    min_gene_overlap: MinGeneOverlap = CheckOptions.min_gene_overlap,
    env_manager: Annotated[str, _flag(RunOptions, "env_manager")] = RunOptions.env_manager,
    device: Annotated[str | None, _flag(RunOptions, "device")] = None,
    scheduler: Annotated[str | None, _flag(RunOptions, "scheduler")] = None,
    trust: Trust = False,
    offline: Offline = False,
    tracking_uri: TrackingUri = None,
    registries: Registries = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
    version: Version = False,
) -> None:
    """Annotate INPUT with MODEL and write predictions, uncertainties, probabilities, embedding and UMAP."""
    one_shot_process()
    _setup_logging(verbose, quiet)
    from runner.annotate import annotate as run_annotate

    values = locals() | {"registries": registries or ()}
    with _running():
        if report is not None:
            from runner.report import check_report_dir

            check_report_dir(report, overwrite=overwrite)
        summary = run_annotate(
            input,
            model,
            output=output,
            table=table,
            key_added=key_added,
            overwrite=overwrite,
            read=_options(ReadOptions, values),
            checks=_options(CheckOptions, values),
            run=_options(RunOptions, values),
            source=_options(ModelOptions, values),
        )
        if report is not None:
            from runner.report import write_report

            page = write_report(summary.output, report, key=summary.key, offline=offline)
    for line in summary.lines():
        typer.echo(line)
    if report is not None:
        typer.echo(f"report      {page}")


@cellzoo_app.command("report")
def report_command(
    input: Annotated[Path, typer.Argument(help="An annotated .h5ad (the output of `annotate`).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder of the report \\[default: INPUT.report/].")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Key K of the results \\[default: the one the file holds].")] = None,
    offline: Offline = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Write an HTML report of an annotated file: the query on the reference map, answers, uncertainty, markers."""
    _setup_logging(verbose, quiet)
    from runner.report import default_report_dir, write_report

    with _running():
        page = write_report(input, output or default_report_dir(input), key=key, offline=offline)
    typer.echo(f"report      {page}")


@cellzoo_app.command()
def inspect(
    input: Annotated[Path, typer.Argument(help="Query in any format `annotate` reads.")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Check the gene overlap and species against this model.")
    ] = None,
    counts_layer: CountsLayer = None,
    gene_column: GeneColumn = None,
    species_map: SpeciesMap = False,
    genome: Genome = None,
    orientation: Orientation = None,
    transpose: Transpose = False,
    matrix_key: MatrixKey = None,
    obs_key: ObsKey = None,
    var_key: VarKey = None,
    external_links: ExternalLinks = False,
    min_gene_overlap: MinGeneOverlap = CheckOptions.min_gene_overlap,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Say what INPUT holds and what the checks find, and print the `annotate` command that works. Writes nothing."""
    one_shot_process()
    _setup_logging(verbose, quiet=quiet or not verbose)
    from runner.describe import inspect_input

    values = locals()
    with _running():
        report = inspect_input(
            input, _options(ReadOptions, values), model_ref=model, checks=_options(CheckOptions, values)
        )
    for line in report.lines():
        typer.echo(line)
    if not report.command:
        raise typer.Exit(1)


@models_app.command("list")
def models_list(registry: Registries = None) -> None:
    """List the registries' models: name, default version, species, tissue, family, cached or not."""
    _setup_logging(False, False)
    from runner.api import model_rows

    with _user_errors():
        found = model_rows(registry or ())
    rows = [("name", "default", "species", "tissue", "family", "cached")]
    for r in found:
        rows.append((r["name"], r["version"], r["species"], r["tissue"], r["family"], "yes" if r["cached"] else "no"))
    _table(rows)


@models_app.command("show")
def models_show(ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")], registry: Registries = None) -> None:
    """Everything the registry says of a model, the pinned reference to cite, and its model card."""
    _setup_logging(False, False)
    from runner.cache import is_cached, model_card
    from runner.registry import load_registries

    name, _, version = ref.partition("@")
    with _user_errors():
        layered = load_registries(registry or ())
        entry = layered.get(name, version or None)
    for field in ("name", "version", "family", "species", "tissue", "description", "url", "sha256", "size"):
        typer.echo(f"{field:<12}{getattr(entry, field)}")
    typer.echo(f"{'versions':<12}{', '.join(sorted(layered.entries[entry.name]))} (default {layered.defaults[name]})")
    typer.echo(f"{'registry':<12}{entry.source}")
    typer.echo(f"{'cached':<12}{'yes' if is_cached(entry.sha256) else 'no'}")
    typer.echo(f"{'pinned':<12}{entry.pinned_reference}")
    card = model_card(entry.sha256, entry.url)
    typer.echo("")
    typer.echo(card if card is not None else f"(model card not cached: `cellzoo models pull {ref}` fetches it)")


@models_app.command("pull")
def models_pull(
    refs: Annotated[list[str], typer.Argument(help="Model references (NAME, NAME@VERSION, pinned URL, ...).")],
    trust: Trust = False,
    offline: Offline = False,
    tracking_uri: TrackingUri = None,
    registry: Registries = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Download and verify models into the cache ahead of time (e.g. before going offline)."""
    _setup_logging(verbose, quiet)
    from runner.resolve import resolve_model_ref

    with _user_errors():
        for ref in refs:
            resolved = resolve_model_ref(
                ref, trust=trust, offline=offline, tracking_uri=tracking_uri, registries=registry or ()
            )
            typer.echo(f"{ref}  sha256 {resolved.sha256 or '-'}  {resolved.path}")


@models_app.command("verify")
def models_verify() -> None:
    """Re-hash every cached archive and compare its unpacked files; evict what fails (exit 1 if any)."""
    _setup_logging(False, False)
    from runner.cache import MARKER, cache_dir, cached_sha256s, evict, is_marked, verify_cached

    if not is_marked():
        typer.echo(f"no cellzoo cache in {cache_dir()} (no {MARKER}): nothing to verify")
        return
    failed = 0
    for sha256 in cached_sha256s():
        result = verify_cached(sha256)
        if result.problem:
            failed += 1
            evict(sha256)
            typer.echo(f"FAILED  {sha256}  {result.problem}; evicted (it is fetched again when next used)")
        else:
            typer.echo(f"ok      {sha256}")
    if failed:
        raise typer.Exit(1)


@models_app.command("rm")
def models_rm(
    refs: Annotated[list[str], typer.Argument(help="NAME, NAME@VERSION, or a cached sha256 (or its first 12+).")],
    registry: Registries = None,
) -> None:
    """Remove models from the cache."""
    _setup_logging(False, False)
    from runner.cache import cached_sha256s, evict
    from runner.registry import load_registries

    with _user_errors():
        for ref in refs:
            matches = [s for s in cached_sha256s() if len(ref) >= 12 and s.startswith(ref)]
            if not matches:
                name, _, version = ref.partition("@")
                matches = [load_registries(registry or ()).get(name, version or None).sha256]
            for sha256 in matches:
                typer.echo(f"{'removed' if evict(sha256) else 'not cached'}  {ref}  {sha256}")


@cache_app.command("dir")
def cache_dir_command() -> None:
    """Print the cache folder ($CELLZOO_CACHE_DIR, else the platform cache folder)."""
    from runner.cache import cache_dir

    typer.echo(str(cache_dir()))


@cache_app.command("clean")
def cache_clean() -> None:
    """Remove every cached model, archive and partial download (only what the cache made; none in use)."""
    from runner.cache import MARKER, cache_dir, clean, is_marked

    if not is_marked():
        typer.echo(f"no cellzoo cache in {cache_dir()} (no {MARKER}): nothing removed")
        return
    with _user_errors():
        freed, skipped = clean()
    typer.echo(f"removed {freed / 1e6:.1f} MB from {cache_dir()}")
    if skipped:
        typer.echo(f"skipped {skipped} entries that a running command is using")


@cellzoo_app.command()
def register(
    model_dir: Annotated[Path, typer.Argument(help="An MLflow model directory.")],
    name: Annotated[str, typer.Option(help="Model name in the registry.")],
    version: Annotated[str, typer.Option(help="Version; a registered name@version never changes.")],
    registry: Annotated[
        Path | None, typer.Option(help="Registry file to add to (created if absent) [default: the zoo's].")
    ] = None,
    url_base: Annotated[
        str | None, typer.Option(help="Where the archive will be served (URL of its folder) [default: relative].")
    ] = None,
    default: Annotated[bool, typer.Option(help="Make this version the name's default.")] = False,
) -> None:
    """Pack MODEL_DIR into a deterministic zip beside the registry file and add its entry (sha256, size)."""
    _setup_logging(False, False)
    from runner.registry import absolute_url, register_model, registry_path

    target = registry or registry_path()
    with _user_errors():
        done = register_model(
            model_dir, name=name, version=version, registry=target, url_base=url_base, make_default=default
        )
    typer.echo(f"{'added' if done.added else 'unchanged (already registered)'}  {name}@{version}  in {target}")
    for field in ("url", "sha256", "size"):
        typer.echo(f"{field:<12}{done.fields[field]}")
    typer.echo(f"{'archive':<12}{done.archive}")
    typer.echo(f"{'pinned':<12}{absolute_url(target, done.fields['url'])}#sha256={done.fields['sha256']}")
    if url_base:
        typer.echo(f"upload {done.archive} to {done.fields['url']}")


@envs_app.command("list")
def envs_list() -> None:
    """List the model environments built so far: key, manager, python, build time, size, path."""
    from runner.envs import envs_dir, list_envs

    rows = list_envs()
    if not rows:
        typer.echo(f"no environments in {envs_dir()}")
        return
    for row in rows:
        typer.echo(
            f"{row['key']}  {row['manager']:<10}  python {row['python']}  built in {row['seconds']} s  "
            f"{row['size_mb']} MB  {row['path']}"
        )


@envs_app.command("clean")
def envs_clean(key: Annotated[str | None, typer.Argument(help="Remove only this environment.")] = None) -> None:
    """Remove the model environments (all, or the one KEY); they are rebuilt when needed."""
    from runner.envs import clean_envs

    try:
        removed = clean_envs(key)
    except CellzooError as err:
        raise _fail(err) from None
    typer.echo(f"removed {len(removed)} environment(s)" + (f": {', '.join(removed)}" if removed else ""))


@cellzoo_app.command()
def build(
    recipe: Annotated[str, typer.Argument(help="Zoo recipe name (model_zoo/recipes/NAME.yaml) or a recipe path.")],
    reference: Annotated[
        list[Path], typer.Option(help="Reference .h5ad with raw counts and labels (repeat for several files).")
    ],
    out: Annotated[Path, typer.Option(help="Folder for the model directory, archive and card.")] = Path("build"),
    param: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE overriding a recipe parameter (e.g. max_epochs=5).")
    ] = None,
    timing_cells: Annotated[
        int, typer.Option(help="Cells annotated to time the model for its card (0: skip).")
    ] = 10_000,
    genes_from: Annotated[
        Path | None,
        typer.Option(
            help="Train on exactly the genes of this query (.h5ad) or gene list (one a line): a model for a "
            "targeted panel (MERFISH, Xenium, CosMx)."
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            envvar="MLFLOW_TRACKING_URI",
            help="MLflow tracking server to log the build to: a run with the recipe, parameters, the model "
            "card's metrics and the model (default: $MLFLOW_TRACKING_URI; none: nothing is logged).",
        ),
    ] = None,
    register: Annotated[
        str | None, typer.Option(help="Add the logged model to the Model Registry as a new version of NAME.")
    ] = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Train a zoo model from a reference, and pack it into a deterministic zip archive."""
    _setup_logging(verbose, quiet)
    from runner.archive import pack_model_dir

    # the runner never imports model_zoo: training runs in its own process
    command = [sys.executable, "-m", "model_zoo.build", recipe, "--out", str(out), "--timing-cells", str(timing_cells)]
    command += [arg for path in reference for arg in ("--reference", str(path))]
    command += [arg for item in param or [] for arg in ("--param", item)]
    command += ["--genes-from", str(genes_from)] if genes_from else []
    command += ["--tracking-uri", tracking_uri] if tracking_uri else []
    command += ["--register", register] if register else []
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise typer.Exit(done.returncode)
    model_dir = Path(done.stdout.strip().splitlines()[-1])
    archive = model_dir.with_suffix(".zip") if model_dir.suffix == "" else Path(f"{model_dir}.zip")
    with _user_errors():
        sha256, size = pack_model_dir(model_dir, archive)
    typer.echo(f"model dir   {model_dir}")
    typer.echo(f"card        {model_dir / 'README.md'}")
    typer.echo(f"archive     {archive}")
    typer.echo(f"sha256      {sha256}")
    typer.echo(f"size        {size}")
