"""The command-line interfaces: ``annotate`` and ``cellzoo``.

Library code raises :class:`runner.errors.CellzooError`; only this module turns errors into a message
on stderr and an exit code (1: failed run, 2: bad usage). Heavy imports happen inside commands, so
``--help`` is fast.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from runner.errors import CellzooError

annotate_app = typer.Typer(add_completion=False, help="Annotate the cells of an h5ad file with a zoo model.")
cellzoo_app = typer.Typer(add_completion=False, no_args_is_help=True, help="cellzoo: the model zoo and its tools.")
models_app = typer.Typer(no_args_is_help=True, help="The models of the registry.")
envs_app = typer.Typer(no_args_is_help=True, help="The models' own environments (built once, reused).")
cellzoo_app.add_typer(models_app, name="models")
cellzoo_app.add_typer(envs_app, name="envs")

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Say more (debug logging).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")]


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    for noisy in ("mlflow", "numba", "h5py", "urllib3", "filelock", "anndata"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")


def _fail(err: CellzooError) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(err.exit_code)


@annotate_app.command()
def annotate(
    input: Annotated[Path, typer.Argument(help="Query .h5ad file (raw counts in a layer, raw.X or X).")],
    model: Annotated[str, typer.Option("--model", "-m", help="NAME, NAME@VERSION, URL#sha256=HEX, model dir or zip.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output .h5ad [default: INPUT.annotated.h5ad].")
    ] = None,
    key_added: Annotated[str | None, typer.Option(help="Key K of the results [default: the model's name].")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file and existing result keys.")] = False,
    counts_layer: Annotated[str | None, typer.Option(help="Layer holding the raw counts.")] = None,
    gene_column: Annotated[str | None, typer.Option(help="var column with gene names of the model's id type.")] = None,
    batch_size: Annotated[int, typer.Option(help="Cells per model call.")] = 10_000,
    unassigned_threshold: Annotated[
        float, typer.Option(help="Cells with uncertainty above this are labelled 'Unassigned'.")
    ] = 0.5,
    min_gene_overlap: Annotated[
        float, typer.Option(help="Refuse queries with fewer of the model's genes than this fraction.")
    ] = 0.2,
    env_manager: Annotated[
        str,
        typer.Option(
            help="Where the model runs: auto (in-process when this interpreter meets the model's pins, else its "
            "own environment), local, uv, virtualenv."
        ),
    ] = "auto",
    device: Annotated[
        str | None, typer.Option(help="Device for models that take one (xgboost, scanvi): cpu or cuda.")
    ] = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Annotate INPUT with MODEL and write predictions, uncertainties, probabilities, embedding and UMAP."""
    _setup_logging(verbose, quiet)
    from runner.annotate import annotate as run_annotate

    try:
        summary = run_annotate(
            input,
            model,
            output=output,
            key_added=key_added,
            overwrite=overwrite,
            counts_layer=counts_layer,
            gene_column=gene_column,
            batch_size=batch_size,
            unassigned_threshold=unassigned_threshold,
            min_gene_overlap=min_gene_overlap,
            env_manager=env_manager,
            device=device,
        )
    except CellzooError as err:
        raise _fail(err) from None
    for line in summary.lines():
        typer.echo(line)


@models_app.command("list")
def models_list() -> None:
    """List the registry's models: name, default version, family, species, tissue, cached or not."""
    from runner.cache import is_cached
    from runner.registry import load_registry

    try:
        registry = load_registry()
    except CellzooError as err:
        raise _fail(err) from None
    rows = [("name", "default", "family", "species", "tissue", "cached")]
    for name in registry.names():
        e = registry.get(name)
        rows.append((name, e.version, e.family, e.species, e.tissue, "yes" if is_cached(e.sha256) else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@models_app.command("show")
def models_show(ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")]) -> None:
    """Everything the registry says of a model, the pinned reference to cite, and its card if cached."""
    from runner.cache import cached_model_dir, is_cached
    from runner.registry import load_registry

    name, _, version = ref.partition("@")
    try:
        entry = load_registry().get(name, version or None)
    except CellzooError as err:
        raise _fail(err) from None
    for field in ("name", "version", "family", "species", "tissue", "description", "url", "sha256", "size"):
        typer.echo(f"{field:<12}{getattr(entry, field)}")
    typer.echo(f"{'cite':<12}{entry.pinned_reference}")
    card = cached_model_dir(entry.sha256) / "README.md"
    if is_cached(entry.sha256) and card.is_file():
        typer.echo("")
        typer.echo(card.read_text())


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
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise typer.Exit(1)
    model_dir = Path(done.stdout.strip().splitlines()[-1])
    archive = model_dir.with_suffix(".zip") if model_dir.suffix == "" else Path(f"{model_dir}.zip")
    try:
        sha256, size = pack_model_dir(model_dir, archive)
    except CellzooError as err:
        raise _fail(err) from None
    typer.echo(f"model dir   {model_dir}")
    typer.echo(f"card        {model_dir / 'README.md'}")
    typer.echo(f"archive     {archive}")
    typer.echo(f"sha256      {sha256}")
    typer.echo(f"size        {size}")
