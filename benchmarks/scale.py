"""Scale and speed: `annotate -m pbmc` against CellTypist and the read floor on large SYNTHETIC queries.

Every measured run is a fresh process; its wall time and the peak resident memory of its whole
process tree (sum over the tree, sampled every 0.1 s, and at least the largest process's own peak
from the kernel) are recorded, and a run above ``--mem-limit-gb`` is killed and reported as such.

    python benchmarks/scale.py [--sizes 100000,300000,1000000] [--parts read,cellzoo,...] [--quick]

Parts: ``read`` (read floor), ``cellzoo`` and ``celltypist`` on synthetic queries of each size (see
`benchmarks/synthetic.py`), ``scanvi`` (cells/s and accuracy against surgery epochs on Kang 2018),
``startup`` (`--help` times and the fixed overhead of a small run), ``gpu`` (cuda vs cpu where a GPU
is available). Prints the tables, writes ``docs/benchmarks/scale.md`` and ``scale_*.png`` there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as a script (python benchmarks/scale.py): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import peers
from benchmarks.report import markdown_table, package_version
from benchmarks.synthetic import cached_synthetic, default_data_dir

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
REFERENCE = DATA / "pbmc" / "soupx_pbmc4k.h5ad"
KANG = DATA / "pbmc" / "kang2018_pbmc.h5ad"
EXAMPLE = ROOT / "examples" / "celltypist_sample.h5ad"
BIN = Path(sys.executable).parent
PARTS = ("read", "cellzoo", "celltypist", "scanvi", "startup", "gpu")
SIZES = (100_000, 300_000, 1_000_000)
QUICK_SIZES = (2_000, 5_000)
EPOCHS = (1, 5, 10, 20, 40)
QUICK_EPOCHS = (1, 5)
CELLTYPIST_MODEL = "celltypist-soupx-pbmc-top300-lbfgs.pkl"
GPU_MODELS = ("pbmc-scanvi", "pbmc-xgboost")  # zoo models of the families that take --device cuda
GB = 1e9
FLOOR = "read floor: X into reused buffers (h5py)"
STREAMED, READ_WHOLE = "read: X streamed by anndata (backed)", "read: anndata.read_h5ad"
CELLZOO, CELLTYPIST = "cellzoo annotate -m pbmc", "CellTypist"
POLL_SECONDS = 0.1
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
ACCURACY_TOLERANCE = 0.01  # the default epochs: the fewest within this of the best accuracy
GOAL_SPEEDUP, GOAL_FLOOR_RATIO, GOAL_RSS_GB, GOAL_STARTUP_S = 2.0, 2.0, 3.0, 0.5


@dataclass
class Measurement:
    """One run of a command: wall seconds, peak RSS of its process tree (bytes), how it ended."""

    seconds: float
    peak_rss: int
    returncode: int
    killed: str | None
    output: str  # the last lines of its stdout and stderr

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.killed is None

    def status(self) -> str:
        if self.killed:
            return self.killed
        return "ok" if self.ok else f"failed (exit {self.returncode}): {self.output.splitlines()[-1:]}"

    def result(self) -> dict:
        """The JSON line a task printed last."""
        return json.loads(self.output.strip().splitlines()[-1])


def tree_rss(pid: int) -> int:
    """Resident memory (bytes) of process ``pid`` and all its descendants, summed, from ``/proc``."""
    parent_of, rss = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        child = int(stat.parent.name)
        parent_of[child], rss[child] = int(fields[1]), int(fields[21]) * PAGE_SIZE
    tree, frontier = {pid}, {pid}
    while frontier:
        frontier = {p for p, parent in parent_of.items() if parent in frontier} - tree
        tree |= frontier
    return sum(rss.get(p, 0) for p in tree)


# Runs the command and writes the largest ru_maxrss of its descendants to argv[1]. The kernel's peak of
# a process forked from this (large) benchmark process would include this process's pages before exec;
# forked from the small wrapper, it does not.
WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code)"
)


def measure(command: list[str], *, mem_limit_gb: float = 20.0) -> Measurement:
    """Run ``command`` (in the repository root) and measure it; kill its process tree above ``mem_limit_gb``.

    The peak is the larger of the tree's summed RSS, sampled every ``POLL_SECONDS``, and the kernel's
    peak of its largest process (``ru_maxrss``, reported by a small wrapper), so short spikes are not
    missed. The wall time includes the wrapper's start (about 0.02 s).
    """
    with tempfile.TemporaryDirectory(prefix="cellzoo-measure-") as tmp, open(Path(tmp) / "log", "w+") as log:
        kernel_peak = Path(tmp) / "maxrss"
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-S", "-c", WRAPPER, kernel_peak, *command],
            cwd=ROOT,
            env=_child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that the guard can kill the whole tree
        )
        peak, killed = 0, None
        while process.poll() is None:
            rss = tree_rss(process.pid)
            peak = max(peak, rss)
            if rss > mem_limit_gb * GB and killed is None:
                killed = f"killed: > {mem_limit_gb:g} GB"
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(POLL_SECONDS)
        seconds = time.perf_counter() - start
        if kernel_peak.exists():  # not when the guard killed the wrapper
            peak = max(peak, int(kernel_peak.read_text()) * 1024)
        log.seek(0)
        output = "\n".join(log.read().strip().splitlines()[-20:])
    return Measurement(seconds, peak, process.returncode, killed, output)


def evict(path: Path) -> None:
    """Start the next run on an even footing: pending writes flushed and ``path``'s pages dropped from the
    page cache, so that every tool reads the query from disk (the Python packages stay cached)."""
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _child_env() -> dict:
    """This environment with the repository first on the path, so its `runner` and `benchmarks` are used."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def task(name: str, *args: object, python: Path | str = sys.executable) -> list[str]:
    return [str(python), "-m", "benchmarks.scale_tasks", name, *map(str, args)]


def celltypist_task(name: str, *args: object) -> list[str]:
    """A task in CellTypist's own environment (its default solver needs scikit-learn < 1.8)."""
    return task(name, *args, python=peers.celltypist_env())


def cli(program: str, *args: object) -> list[str]:
    return [str(BIN / program), *map(str, args)]


def typical(runs: list[Measurement]) -> Measurement:
    """The median wall time and the largest peak of repeated runs; a failed run, when one failed."""
    failed = [run for run in runs if not run.ok]
    if failed:
        return failed[0]
    seconds, peak = statistics.median(r.seconds for r in runs), max(r.peak_rss for r in runs)
    return Measurement(seconds, peak, 0, None, runs[-1].output)


def median_seconds(command: list[str], repeats: int) -> float:
    """Median wall time of ``repeats`` runs, timed directly (no wrapper: these take tenths of a second)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=_child_env(), capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return statistics.median(times)


def goal_row(goal: str, value: str, met: bool | None) -> list[str]:
    return [goal, value, "not measured" if met is None else "met" if met else "NOT met"]


# ---- part a: read floor, cellzoo, CellTypist on synthetic queries ----


def annotate_supports_backed() -> bool:
    """Whether this checkout's `annotate` streams h5ad files (its `--backed` flag)."""
    done = subprocess.run(cli("annotate", "--help"), env=_child_env(), capture_output=True, text=True)
    return "--backed" in done.stdout


def pull_pbmc() -> None:
    """The `pbmc` model into the cache before the first timed run."""
    subprocess.run(cli("cellzoo", "models", "pull", "pbmc"), env=_child_env(), check=True, capture_output=True)


def celltypist_model(data_dir: Path, mem_limit_gb: float) -> Path:
    """CellTypist trained on the SoupX reference like the `pbmc` model (trained once, then cached)."""
    path = data_dir / CELLTYPIST_MODEL
    if not path.exists():
        print(f"training CellTypist on {REFERENCE.name} (once; cached as {path})", flush=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.pkl")
        run = measure(celltypist_task("celltypist-train", REFERENCE, tmp), mem_limit_gb=mem_limit_gb)
        if not run.ok:
            raise RuntimeError(f"training CellTypist failed: {run.status()}\n{run.output}")
        tmp.replace(path)
    return path


def scale_runs(args: argparse.Namespace) -> dict[int, dict[str, Measurement | str]]:
    """For each size, each tool's measurement (or why it was skipped), keyed by tool."""
    tools: dict[str, object] = {}
    if "read" in args.parts:
        tools[FLOOR] = lambda path, out: task("raw", path)
        tools[STREAMED] = lambda path, out: task("stream", path)
        tools[READ_WHOLE] = lambda path, out: task("read", path)
    if "cellzoo" in args.parts:
        pull_pbmc()
        backed = ["--backed"] if annotate_supports_backed() else []
        args.settings["cellzoo"] = shlex.join(["annotate", "FILE", "-m", "pbmc", "-o", "OUT", "--overwrite", *backed])
        tools[CELLZOO] = lambda path, out: cli("annotate", path, "-m", "pbmc", "-o", out, "--overwrite", *backed)
    if "celltypist" in args.parts:
        model = celltypist_model(args.data_dir, args.mem_limit_gb)
        args.settings["CellTypist"] = (
            f"{peers.celltypist_version()}, trained on the SoupX reference (log1p CP10k, feature_selection=True, "
            "top_genes=300, its default solver); annotate with majority_voting=False"
        )
        tools[CELLTYPIST] = lambda path, out: celltypist_task("celltypist", path, model, out)
    results: dict[int, dict[str, Measurement | str]] = {}
    for n_cells in args.sizes:
        start = time.perf_counter()
        path = cached_synthetic(n_cells, data_dir=args.data_dir, seed=args.seed)
        print(f"\n{n_cells} cells: {path} ({time.perf_counter() - start:.0f} s to get it ready)", flush=True)
        results[n_cells] = {}
        for tool, command in tools.items():
            if isinstance(command, str):
                results[n_cells][tool] = command
                continue
            out = args.data_dir / f"annotated-{n_cells}.h5ad"
            runs = []
            while len(runs) < args.repeats and all(run.ok for run in runs):
                evict(path)
                runs.append(measure(command(path, out), mem_limit_gb=args.mem_limit_gb))
                out.unlink(missing_ok=True)
            run = results[n_cells][tool] = typical(runs)
            times = ", ".join(f"{r.seconds:.1f}" for r in runs)
            line = f"{run.seconds:8.1f} s  {run.peak_rss / GB:6.2f} GB  {run.status()} ({times})"
            print(f"  {tool:<36} {line}", flush=True)
    return results


def scale_section(results: dict[int, dict[str, Measurement | str]], docs_dir: Path) -> str:
    rows = []
    for n_cells, tools in results.items():
        for tool, run in tools.items():
            if isinstance(run, str):
                rows.append([f"{n_cells:,}", tool, "", "", "", run])
            else:
                speed = f"{n_cells / run.seconds:,.0f}" if run.ok else ""
                rows.append(
                    [f"{n_cells:,}", tool, f"{run.seconds:.1f}", speed, f"{run.peak_rss / GB:.2f}", run.status()]
                )
    table = markdown_table(["cells", "run", "wall s", "cells/s", "peak RSS GB", "status"], rows)
    ratios, goals = scale_ratios(results)
    plot_scale(results, docs_dir)
    return "\n\n".join(
        [
            "## Synthetic queries: cellzoo, CellTypist and the read floor",
            "The read floor reads every stored value of X (`data` and `indices`) 10,000 cells at a time with h5py "
            "into one pair of buffers it reuses: the least a program must do to see the matrix. anndata's backed "
            "reader and `read_h5ad` (what an in-memory tool does first) are shown beside it.",
            table,
            "Ratios (throughput: cellzoo cells/s over CellTypist's; time: cellzoo's over the read floor's):",
            ratios,
            "Goals of issue 6:",
            goals,
            "![wall time](scale_time.png) ![peak RSS](scale_rss.png)",
        ]
    )


def scale_ratios(results: dict[int, dict[str, Measurement | str]]) -> tuple[str, str]:
    rows, speedups, floor_ratios = [], {}, {}
    for n_cells, tools in results.items():
        ours, theirs = finished(tools.get(CELLZOO)), finished(tools.get(CELLTYPIST))
        floor, streamed = finished(tools.get(FLOOR)), finished(tools.get(STREAMED))
        whole = finished(tools.get(READ_WHOLE))
        if ours and theirs:
            speedups[n_cells] = theirs.seconds / ours.seconds
        if ours and floor:
            floor_ratios[n_cells] = ours.seconds / floor.seconds
        vs_streamed = f"{ours.seconds / streamed.seconds:.2f}" if ours and streamed else ""
        vs_whole = f"{ours.seconds / whole.seconds:.2f}" if ours and whole else ""
        rows.append(
            [
                f"{n_cells:,}",
                f"{speedups[n_cells]:.2f}" if n_cells in speedups else "",
                f"{floor_ratios[n_cells]:.2f}" if n_cells in floor_ratios else "",
                vs_streamed,
                vs_whole,
            ]
        )
    header = [
        "cells",
        "cellzoo / CellTypist (throughput)",
        "cellzoo / read floor (time)",
        "cellzoo / anndata streamed read",
        "cellzoo / read_h5ad",
    ]
    largest = max(results)
    ours_largest = results[largest].get(CELLZOO)
    rss = ours_largest.peak_rss / GB if isinstance(ours_largest, Measurement) else None
    million = results.get(1_000_000, {}).get(CELLZOO)
    goals = [
        goal_row(
            f"cellzoo throughput >= {GOAL_SPEEDUP:g}x CellTypist (every size both finished)",
            ", ".join(f"{v:.2f}x" for v in speedups.values()),
            all(v >= GOAL_SPEEDUP for v in speedups.values()) if speedups else None,
        ),
        goal_row(
            f"cellzoo time <= {GOAL_FLOOR_RATIO:g}x the read floor (every size)",
            ", ".join(f"{v:.2f}x" for v in floor_ratios.values()),
            all(v <= GOAL_FLOOR_RATIO for v in floor_ratios.values()) if floor_ratios else None,
        ),
        goal_row(
            f"cellzoo peak RSS < {GOAL_RSS_GB:g} GB at 1,000,000 cells (here: at {largest:,})",
            f"{rss:.2f} GB" if rss is not None else "",
            rss < GOAL_RSS_GB if rss is not None else None,
        ),
        goal_row(
            "the 1,000,000-cell cellzoo run finishes",
            million.status() if isinstance(million, Measurement) else "not run",
            million.ok if isinstance(million, Measurement) else None,
        ),
    ]
    return markdown_table(header, rows), markdown_table(["goal", "measured", "verdict"], goals)


def plot_scale(results: dict[int, dict[str, Measurement | str]], docs_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tools = {tool for runs in results.values() for tool, run in runs.items() if isinstance(run, Measurement)}
    for name, value, label in (
        ("time", lambda r: r.seconds, "wall time (s)"),
        ("rss", lambda r: r.peak_rss / GB, "peak RSS of the process tree (GB)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for tool in sorted(tools):
            points = [(n, value(runs[tool])) for n, runs in results.items() if finished(runs.get(tool))]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=tool)
        ax.set(xscale="log", yscale="log", xlabel="cells (synthetic)", ylabel=label)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(docs_dir / f"scale_{name}.png", dpi=120)
        plt.close(fig)


def finished(run: Measurement | str | None) -> Measurement | None:
    """The measurement of a run that finished; None for one that failed, was killed or skipped."""
    return run if isinstance(run, Measurement) and run.ok else None


# ---- part b: scanvi query epochs ----


def scanvi_section(args: argparse.Namespace, docs_dir: Path) -> str:
    run = measure(task("scanvi-curve", KANG, *args.epochs), mem_limit_gb=args.mem_limit_gb)
    if not run.ok:
        return f"## pbmc-scanvi: query epochs\n\n{run.status()}\n\n```\n{run.output}\n```"
    result = run.result()
    curve = result["rows"]
    best = max(r["accuracy"] for r in curve)
    chosen = min(r["epochs"] for r in curve if r["accuracy"] >= best - ACCURACY_TOLERANCE)
    default = result["default_epochs"]
    verdict = (
        f"the model's default ({default} epochs) is supported by the curve"
        if chosen == default
        else f"this run's curve favours {chosen} epochs over the model's default {default}"
    ) + (
        f". One run: the accuracy at one setting moves between runs of the same code by more than {ACCURACY_TOLERANCE}"
        " (scVI training on CPU threads is not bit-reproducible), so repeat it before changing the default"
    )
    plot_epochs(curve, docs_dir)
    rows = [[r["epochs"], f"{r['seconds']:.1f}", f"{r['cells_per_s']:,.0f}", f"{r['accuracy']:.4f}"] for r in curve]
    return "\n\n".join(
        [
            "## pbmc-scanvi: query cells per second against surgery epochs",
            f"Kang 2018 ({result['cells']:,} cells, {result['scored']:,} with a label of the recipe's evaluation "
            "table), the zoo model's pyfunc loaded once, `predict` timed per setting of `query_epochs` (surgery "
            "epochs at most; early stopping may end sooner). Accuracy at the Cell Ontology level; cells above the "
            "default uncertainty threshold count as wrong, as `annotate` reports them.",
            markdown_table(["query epochs", "seconds", "cells/s", "ontology accuracy"], rows),
            f"Best accuracy {best:.4f}; the fewest epochs within {ACCURACY_TOLERANCE} of it: **{chosen}**; {verdict}.",
            "![epochs](scale_scanvi_epochs.png)",
        ]
    )


def plot_epochs(curve: list[dict], docs_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epochs"] for r in curve]
    ax.plot(epochs, [r["accuracy"] for r in curve], marker="o", color="C0")
    # the whole accuracy range: a zoomed axis made differences within the run-to-run noise look like a trend
    ax.set(xlabel="query (surgery) epochs", ylabel="ontology-level accuracy, Kang 2018", ylim=(0.0, 1.0))
    ax.set_title("one run each setting", fontsize=9)
    speed = ax.twinx()
    speed.plot(epochs, [r["cells_per_s"] for r in curve], marker="s", color="C1")
    speed.set_ylabel("query cells / s", color="C1")
    speed.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(docs_dir / "scale_scanvi_epochs.png", dpi=120)
    plt.close(fig)


# ---- part c: start-up ----


def startup_section(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "annotated.h5ad"
        rows = [
            ["`annotate --help`", 5, median_seconds(cli("annotate", "--help"), 5)],
            ["`cellzoo --help`", 5, median_seconds(cli("cellzoo", "--help"), 5)],
            ['`python -c "import runner"`', 5, median_seconds([sys.executable, "-c", "import runner"], 5)],
            [
                f"`annotate {EXAMPLE.relative_to(ROOT)} -m pbmc -o X` ({_n_cells(EXAMPLE)} cells, model cached)",
                3,
                median_seconds(cli("annotate", EXAMPLE, "-m", "pbmc", "-o", out, "--overwrite"), 3),
            ],
        ]
    inside = measure(task("overhead", EXAMPLE)).result()
    rows += [[f"in-process: {k.removesuffix('_s').replace('_', ' ')}", 1, v] for k, v in inside.items()]
    help_times = [rows[0][2], rows[1][2]]
    goal = goal_row(
        f"`annotate --help` and `cellzoo --help` < {GOAL_STARTUP_S} s",
        ", ".join(f"{t:.2f} s" for t in help_times),
        max(help_times) < GOAL_STARTUP_S,
    )
    return "\n\n".join(
        [
            "## Start-up and the fixed overhead of a run",
            markdown_table(["command", "runs", "median wall s"], [[c, n, f"{s:.2f}"] for c, n, s in rows]),
            markdown_table(["goal", "measured", "verdict"], [goal]),
        ]
    )


def _n_cells(path: Path) -> int:
    import anndata as ad

    return ad.read_h5ad(path, backed="r").n_obs


# ---- part d: GPU ----


def gpu_section(args: argparse.Namespace) -> str:
    check = measure(task("cuda"))
    if not (check.ok and check.result()["cuda"]):
        return "## GPU\n\nNo GPU was available to torch on this machine: `--device cuda` was not measured."
    from runner.registry import load_registries

    names = set(load_registries(()).names())
    rows = []
    for model in GPU_MODELS:
        if model not in names:
            rows.append([model, "", "", "", "not in the registry"])
            continue
        with tempfile.TemporaryDirectory() as tmp:
            runs = {
                device: measure(
                    cli("annotate", KANG, "-m", model, "-o", Path(tmp) / "out.h5ad", "--overwrite", "--device", device),
                    mem_limit_gb=args.mem_limit_gb,
                )
                for device in ("cpu", "cuda")
            }
        speedup = runs["cpu"].seconds / runs["cuda"].seconds if all(r.ok for r in runs.values()) else None
        rows.append(
            [
                model,
                f"{runs['cpu'].seconds:.1f}",
                f"{runs['cuda'].seconds:.1f}",
                f"{speedup:.2f}x" if speedup else "",
                "; ".join(f"{d}: {r.status()}" for d, r in runs.items()),
            ]
        )
    header = ["model (Kang 2018)", "cpu s", "cuda s", "speed-up", "status"]
    return "## GPU\n\n" + markdown_table(header, rows)


# ---- the fragment ----


def machine_and_versions(args: argparse.Namespace) -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    packages = ("cellzoo", "scanpy", "anndata", "h5py", "numpy", "torch", "scvi-tools", "mlflow")  # CellTypist: own env
    versions = [f"{package} {package_version(package, '(not installed)')}" for package in packages]
    settings = {**args.settings, "sizes": ", ".join(f"{n:,}" for n in args.sizes), "seed": args.seed}
    settings |= {"runs per tool and size": f"{args.repeats} (median wall time, largest peak RSS)"}
    settings |= {"memory guard": f"{args.mem_limit_gb:g} GB", "scanvi query epochs": ", ".join(map(str, args.epochs))}
    return "\n".join(
        [
            f"- Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, {memory:.1f} GB RAM, Python {platform.python_version()}",
            f"- Versions: {', '.join(versions)}",
            f"- Settings: {'; '.join(f'{k}: {v}' for k, v in settings.items())}",
            "- Each run is a fresh process; wall time includes its start-up and the write of the annotated h5ad "
            "(both tools write one); peak RSS is the sum over the run's process tree. Before every run pending "
            "writes are flushed and the synthetic file's pages are dropped from the page cache (posix_fadvise "
            "DONTNEED), so every tool reads it from disk; the Python packages stay cached.",
            f"- Date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
            f"- Reproduce: `{args.command}`",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], help="cells, comma-separated")
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes {QUICK_SIZES} and epochs {QUICK_EPOCHS}")
    parser.add_argument("--parts", type=lambda s: s.split(","), default=list(PARTS), help=f"of {','.join(PARTS)}")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="synthetic queries are cached here")
    parser.add_argument("--docs-dir", type=Path, default=ROOT / "docs" / "benchmarks", help="scale.md and plots")
    parser.add_argument("--mem-limit-gb", type=float, default=20.0, help="kill a run whose process tree goes above")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, help="runs per tool and size (default 3; 1 --quick)")
    args = parser.parse_args(argv)
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    args.sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    args.epochs = QUICK_EPOCHS if args.quick else EPOCHS
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.command = shlex.join(["python", "benchmarks/scale.py", *(sys.argv[1:] if argv is None else argv)])
    args.settings = {}
    return args


def main(argv: list[str] | None = None) -> str:
    """Run the parts asked for; print the tables; write ``scale.md`` and plots to ``--docs-dir``; return it."""
    args = parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    args.docs_dir.mkdir(parents=True, exist_ok=True)
    sections, timings = [], []
    parts = [
        (("read", "cellzoo", "celltypist"), lambda: scale_section(scale_runs(args), args.docs_dir)),
        (("scanvi",), lambda: scanvi_section(args, args.docs_dir)),
        (("startup",), lambda: startup_section(args)),
        (("gpu",), lambda: gpu_section(args)),
    ]
    for names, run in parts:
        if set(names) & set(args.parts):
            start = time.perf_counter()
            sections.append(run())
            timings.append(f"{'/'.join(n for n in names if n in args.parts)} {time.perf_counter() - start:.0f} s")
            print("\n" + sections[-1], flush=True)
    markdown = "\n\n".join(
        [
            "# Scale and speed",
            machine_and_versions(args),
            *sections,
            f"Time each part of this benchmark took: {', '.join(timings)}.",
        ]
    )
    (args.docs_dir / "scale.md").write_text(markdown + "\n")
    return markdown


if __name__ == "__main__":
    main()
