"""The report of an annotated file: one self-contained HTML page and its figures (``cellzoo report``).

The page (``DIR/index.html``, its figures embedded) and each figure as PNG and SVG (``DIR/figures/``):
the query over the model's reference map coloured by answer, by uncertainty and by novelty; the answers'
counts at each level of the Cell Ontology; the uncertainty of each finest label; a dotplot of each class's
marker genes (the model's, computed from its reference at build time) in the query's cells; the gene
overlap; the provenance. The model is found through ``uns[K]['model']`` (by its sha256 in the cache,
else its local folder, else its pinned URL), so a cached model needs no network. A model built before
models carried their reference map and markers gives a report without them, saying so.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from runner import keys
from runner.errors import CellzooError, InputError, OutputError, UsageError
from runner.files import atomic_folder, check_writable_path, try_writing_in
from runner.keys import ResultKeys

logger = logging.getLogger(__name__)

REFERENCE_MAP = "artifacts/reference_map.npz"  # model_zoo.pyfunc_io.save_reference_summary writes these
MARKERS = "artifacts/markers.json"
WEIGHTS = "artifacts/weights.npz"  # every family's weights hold ``reference_umap``
MAX_POINTS = 200_000  # query cells drawn on a map (a random sample beyond; every cell is counted)
GREY, UNASSIGNED_COLOUR = "#d9d9d9", "#7f7f7f"
PAGE = "index.html"
FIGURES = ("map_labels", "map_scores", "levels", "uncertainty", "dotplot")  # figures/NAME.png and .svg


@dataclass
class ModelParts:
    """What the report draws from the model, and what it lacks."""

    path: Path | None = None
    reference_umap: np.ndarray | None = None
    reference_label: np.ndarray | None = None
    markers: dict | None = None
    missing: list[str] = field(default_factory=list)


def result_key(uns, key: str | None) -> str:
    """The key K of the results in ``uns`` (the one there is, or ``key``)."""
    found = [k for k, v in uns.items() if isinstance(v, dict) and "model" in v and "classes" in v]
    if key is not None:
        if key not in found:
            raise InputError(f"no cellzoo results under key {key!r}; the file has: {', '.join(found) or 'none'}")
        return key
    if len(found) != 1:
        raise InputError(
            f"the file holds {'no' if not found else len(found)} cellzoo results "
            f"({', '.join(found) or 'annotate it first'}); choose one with --key"
            if found
            else "the file holds no cellzoo results: run `annotate` on it first"
        )
    return found[0]


def find_model(model: dict, *, offline: bool) -> Path | None:
    """The model directory of a run's provenance ``model``: cached by its sha256, its local folder, or fetched
    by its pinned URL (not when ``offline``); None when none is found (the report then goes without it)."""
    from runner import cache
    from runner.resolve import resolve_model_ref

    sha256, url, reference = str(model.get("sha256", "")), str(model.get("url", "")), str(model.get("reference", ""))
    if sha256 and cache.is_cached(sha256):
        return cache.cached_model_dir(sha256)
    if not sha256 and reference and (Path(reference) / "MLmodel").is_file():
        return Path(reference)
    if sha256 and url:
        try:
            return resolve_model_ref(f"{url}#sha256={sha256}", offline=offline).path
        except CellzooError as err:
            logger.warning("the model is not available (%s): the report goes without its reference map", err)
    return None


def model_parts(path: Path | None) -> ModelParts:
    """The model's reference map (coordinates and labels) and markers, and a note for each it lacks."""
    parts = ModelParts(path=path)
    if path is None:
        parts.missing.append("the model could not be found (not cached, and offline or not reachable)")
        return parts
    if (path / REFERENCE_MAP).is_file():
        with np.load(path / REFERENCE_MAP, allow_pickle=False) as arrays:
            parts.reference_umap, parts.reference_label = arrays["umap"], arrays["label"].astype(str)
    else:
        if (path / WEIGHTS).is_file():
            with np.load(path / WEIGHTS, allow_pickle=False) as arrays:
                parts.reference_umap = arrays.get("reference_umap")
        parts.missing.append(
            "the model was built before models carried their reference cells' labels: the reference map "
            "is drawn in grey (rebuild the model, or use a newer version, for a labelled backdrop)"
        )
    if (path / MARKERS).is_file():
        parts.markers = json.loads((path / MARKERS).read_text())
    else:
        parts.missing.append("the model carries no marker genes (built before they were stored): no dotplot")
    return parts


def marker_expression(path: Path, uns: dict, parts: ModelParts, groups: pd.Series) -> pd.DataFrame | None:
    """Mean log1p(CP10k) expression and the share of cells with a count of each marker gene in each group of
    cells (``groups``, one label a cell), read from the annotated file's counts the way ``annotate`` read them
    (the same counts source and gene names, aligned to the model's genes). Columns: group, gene, mean, fraction."""
    from runner.annotate import aligned_blocks
    from runner.invoke import read_model_info
    from runner.options import CheckOptions, ReadOptions
    from runner.query import check_query
    from runner.sources import open_query

    if parts.markers is None or parts.path is None:
        return None
    params = uns.get("params", {})
    checks = CheckOptions(
        counts_layer=params.get("counts_layer") or None,
        gene_column=params.get("gene_column") or None,
        species_map=bool(params.get("species_map", False)),
        min_gene_overlap=0.0,
    )
    info = read_model_info(parts.path)
    wanted = list(dict.fromkeys(m["gene"] for ms in parts.markers["markers"].values() for m in ms))
    columns = pd.Index(info.genes).get_indexer(wanted)
    codes, names = pd.factorize(groups.astype(str))
    sums = np.zeros((len(names), len(wanted)))
    detected = np.zeros_like(sums)
    query = open_query(path, ReadOptions(), checks.counts_layer, None)
    try:
        checked = check_query(query, info, checks, 10_000)
        start = 0
        for totals, _, _, aligned in aligned_blocks(query, checked, 10_000):
            block = aligned[:, columns].toarray() if len(columns) else np.zeros((aligned.shape[0], 0))
            expression = np.log1p(block / np.maximum(totals, 1.0)[:, None] * 1e4)
            onehot = np.zeros((len(names), len(block)))
            onehot[codes[start : start + len(block)], np.arange(len(block))] = 1.0
            sums += onehot @ expression
            detected += onehot @ (block > 0)
            start += len(block)
    finally:
        query.close()
    size = np.maximum(np.bincount(codes, minlength=len(names)), 1)[:, None]
    frame = pd.DataFrame(
        {
            "group": np.repeat(names, len(wanted)),
            "gene": np.tile(wanted, len(names)),
            "mean": (sums / size).ravel(),
            "fraction": (detected / size).ravel(),
        }
    )
    return frame


class Figures:
    """Figures saved as PNG and SVG under ``folder`` and kept for the page (as embedded PNG)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.saved: dict[str, str] = {}

    def save(self, fig, name: str) -> None:
        import matplotlib.pyplot as plt

        fig.savefig(self.folder / f"{name}.png", dpi=100, bbox_inches="tight")
        fig.savefig(self.folder / f"{name}.svg", bbox_inches="tight")
        plt.close(fig)
        self.saved[name] = base64.b64encode((self.folder / f"{name}.png").read_bytes()).decode()


def palette(labels: list[str]) -> dict[str, str]:
    """A colour per label, the same in every figure (``Unassigned`` grey): tab10's strong colours first."""
    import matplotlib

    strong = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7]  # 7: tab10's grey
    colours = [matplotlib.colors.to_hex(c) for c in strong + list(matplotlib.colormaps["Dark2"].colors)]
    colours += [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20b"].colors]
    named = [label for label in labels if label != keys.UNASSIGNED]
    return {label: colours[i % len(colours)] for i, label in enumerate(named)} | {keys.UNASSIGNED: UNASSIGNED_COLOUR}


def _sample(n: int) -> np.ndarray:
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))


def _backdrop(ax, parts: ModelParts, colours: dict[str, str] | None = None) -> None:
    if parts.reference_umap is None:
        return
    if colours is None or parts.reference_label is None:
        ax.scatter(*parts.reference_umap.T, s=8, c=GREY, linewidths=0, rasterized=True)
    else:
        ax.scatter(
            *parts.reference_umap.T,
            s=8,
            c=[colours.get(label, GREY) for label in parts.reference_label],
            linewidths=0,
            rasterized=True,
        )


def _clean(ax, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")


def map_figures(figures: Figures, umap: np.ndarray, obs: pd.DataFrame, result: ResultKeys, parts, colours) -> None:
    """The query over the reference map: by answer (beside the reference by its labels), and by uncertainty
    and novelty."""
    import matplotlib.pyplot as plt

    shown = _sample(len(umap))
    fig, axes = plt.subplots(1, 3, figsize=(19, 6))
    _backdrop(axes[0], parts, colours)
    _clean(axes[0], "reference cells, by their labels" if parts.reference_label is not None else "reference cells")
    panels = [(result.finest, "finest label (most probable class)"), (result.predicted, "answer")]
    for ax, (column, what) in zip(axes[1:], panels, strict=True):
        _backdrop(ax, parts)
        values = obs[column].astype(str).to_numpy()[shown] if column in obs else np.full(len(shown), "")
        for label in colours:
            cells = values == label
            if cells.any():
                ax.scatter(*umap[shown][cells].T, s=7, c=colours[label], linewidths=0, label=label, rasterized=True)
        _clean(ax, f"query cells ({len(umap):,}) by {what}: {column}")
        ax.legend(fontsize=8, markerscale=2.5, frameon=False, loc="upper center", bbox_to_anchor=(0.5, 0), ncol=3)
    figures.save(fig, "map_labels")

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    scores = [(result.uncertainty, "uncertainty (0 = certain)", "viridis", (0, 1))]
    if result.novelty in obs and np.isfinite(obs[result.novelty]).any():
        scores.append((result.novelty, "novelty (above 1: unlike the reference)", "plasma", (0, 2)))
    for ax, (column, title, cmap, (low, high)) in zip(axes, scores, strict=False):
        _backdrop(ax, parts)
        values = obs[column].to_numpy(dtype=float)[shown]
        order = np.argsort(values)  # the highest drawn last, on top
        points = ax.scatter(
            *umap[shown][order].T, s=4, c=values[order], cmap=cmap, vmin=low, vmax=high, linewidths=0, rasterized=True
        )
        fig.colorbar(points, ax=ax, shrink=0.7)
        _clean(ax, f"{title}: {column}")
    if len(scores) == 1:
        axes[1].set_axis_off()
        axes[1].text(0.5, 0.5, "this model writes no novelty score", ha="center", va="center")
    figures.save(fig, "map_scores")


def level_counts(figures: Figures, obs: pd.DataFrame, result: ResultKeys, colours) -> list[str]:
    """Bar charts of the answers' counts at each level present (answer, compartment, lineage)."""
    import matplotlib.pyplot as plt

    columns = [c for c in (result.predicted, *(result.level(n) for n in keys.LEVELS)) if c in obs]
    fig, axes = plt.subplots(1, len(columns), figsize=(5.5 * len(columns), 0.35 * obs[columns[0]].nunique() + 2))
    for ax, column in zip(np.atleast_1d(axes), columns, strict=True):
        counts = obs[column].astype(str).value_counts().sort_values()
        ax.barh(counts.index, counts.to_numpy(), color=[colours.get(k, "#4c72b0") for k in counts.index])
        for y, n in enumerate(counts.to_numpy()):
            ax.text(n, y, f" {n:,}", va="center", fontsize=8)
        ax.set_title(column, fontsize=10)
        ax.set_xlabel("cells")
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    figures.save(fig, "levels")
    return columns


def uncertainty_histograms(figures: Figures, obs: pd.DataFrame, result: ResultKeys, colours, threshold) -> None:
    """The uncertainty of the cells of each finest label (the most probable class), one panel a label."""
    import matplotlib.pyplot as plt

    labels = obs[result.finest].astype(str) if result.finest in obs else obs[result.predicted].astype(str)
    names = labels.value_counts().index.tolist()
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.6 * rows), squeeze=False, sharex=True)
    values = obs[result.uncertainty].to_numpy(dtype=float)
    for ax, name in zip(axes.ravel(), names, strict=False):
        cells = labels.to_numpy() == name
        ax.hist(values[cells], bins=np.linspace(0, 1, 21), color=colours.get(name, "#4c72b0"))
        ax.axvline(threshold, color="black", lw=0.8, ls="--")
        ax.set_title(f"{name} ({cells.sum():,})", fontsize=9)
    for ax in axes.ravel()[len(names) :]:
        ax.set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel("uncertainty")
    fig.suptitle(f"uncertainty by finest label; dashed: the unassigned threshold {threshold}", fontsize=10)
    fig.tight_layout()
    figures.save(fig, "uncertainty")


def dotplot(figures: Figures, expression: pd.DataFrame, markers: dict, groups: list[str]) -> None:
    """Each class's marker genes (columns, grouped by class) in each answer's cells (rows): dot size = share of
    cells with a count, colour = mean log1p(CP10k) scaled to the gene's largest group mean."""
    import matplotlib.pyplot as plt

    genes = list(dict.fromkeys(m["gene"] for ms in markers["markers"].values() for m in ms))
    mean = expression.pivot(index="group", columns="gene", values="mean").reindex(index=groups, columns=genes)
    fraction = expression.pivot(index="group", columns="gene", values="fraction").reindex(index=groups, columns=genes)
    scaled = mean / np.maximum(mean.max(axis=0), 1e-12)
    fig, ax = plt.subplots(figsize=(0.32 * len(genes) + 3.5, 0.4 * len(groups) + 2.2))
    y, x = np.meshgrid(np.arange(len(groups)), np.arange(len(genes)), indexing="ij")
    points = ax.scatter(
        x.ravel(),
        y.ravel(),
        s=fraction.to_numpy().ravel() * 120,
        c=scaled.to_numpy().ravel(),
        cmap="Reds",
        vmin=0,
        vmax=1,
    )
    ax.set_xticks(range(len(genes)), genes, rotation=90, fontsize=8)
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.set_xlim(-0.6, len(genes) - 0.4)
    ax.set_ylim(len(groups) - 0.5, -0.5)
    position = 0
    for name, ms in markers["markers"].items():
        ax.text(position + (len(ms) - 1) / 2, -0.7, name, ha="center", va="bottom", fontsize=8)
        position += len(ms)
        ax.axvline(position - 0.5, color="#cccccc", lw=0.5)
    fig.colorbar(points, ax=ax, shrink=0.6, label="mean expression (scaled per gene)")
    for share in (0.25, 0.5, 1.0):
        ax.scatter([], [], s=share * 120, c="#888888", label=f"{share:.0%} of cells")
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.15, 1))
    ax.set_ylabel("answer")
    figures.save(fig, "dotplot")


def _table(rows: list[tuple[str, object]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _figure(figures: Figures, name: str, caption: str) -> str:
    if name not in figures.saved:
        return ""
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{figures.saved[name]}">'
        f'<figcaption>{html.escape(caption)} (<a href="figures/{name}.svg">SVG</a>, '
        f'<a href="figures/{name}.png">PNG</a>)</figcaption></figure>'
    )


STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
img{max-width:100%}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:left;font-size:13px}th{background:#f4f4f4}
.note{background:#fff4e0;padding:8px 12px;border-left:4px solid #e0a030}
figcaption{font-size:13px;color:#555}"""


def default_report_dir(path: Path) -> Path:
    """``INPUT.report/`` beside an annotated file (``x.annotated.h5ad`` -> ``x.annotated.report``)."""
    return path.with_name(f"{path.name.removesuffix('.h5ad')}.report")


def check_report_dir(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse, before a run, a report folder that cannot be one, or that holds a report and ``overwrite`` is
    not given (``annotate --report``; ``cellzoo report`` replaces the report it is asked to write)."""
    check_writable_path("--report", out_dir, folder=True)
    try:
        held = (out_dir / PAGE).exists()
        try_writing_in(next(p for p in [out_dir, *out_dir.parents] if p.exists()))
    except OSError as err:
        raise UsageError(f"--report {out_dir}: {err.strerror or err}; choose another folder") from err
    if held and not overwrite:
        raise UsageError(f"--report {out_dir} holds a report; pass --overwrite to replace it, or choose another folder")


def write_report(path: Path, out_dir: Path, *, key: str | None = None, offline: bool = False) -> Path:
    """Write the report of the annotated file ``path`` into ``out_dir``; the page's path.

    Writes ``out_dir/index.html`` (self-contained: its figures embedded) and ``out_dir/figures/NAME.png`` and
    ``.svg`` for ``map_labels``, ``map_scores``, ``levels``, ``uncertainty`` and ``dotplot`` (the last when the
    model carries marker genes). They are made in a temporary folder beside ``out_dir`` and renamed into it
    once all are written (an earlier report there is replaced; other files are kept).
    """
    import anndata as ad
    import matplotlib

    from runner.readers import READ_ERRORS

    matplotlib.use("Agg")
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    check_writable_path("the report folder", out_dir, folder=True)
    try:
        adata = ad.read_h5ad(path, backed="r")
    except READ_ERRORS as err:
        raise InputError(f"{path} is not a readable h5ad file ({err}); give the output of `annotate`") from err
    try:
        k = result_key(adata.uns, key)
        uns = adata.uns[k]
        result = ResultKeys(k)
        obs = adata.obs.copy()
        umap = np.asarray(adata.obsm[result.umap]) if result.umap in adata.obsm else None
    finally:
        adata.file.close()
    model = dict(uns.get("model", {}))
    parts = model_parts(find_model(model, offline=offline))
    answers = obs[result.predicted].astype(str)
    order = [c for c in answers.value_counts().index if c != keys.UNASSIGNED] + (
        [keys.UNASSIGNED] if (answers == keys.UNASSIGNED).any() else []
    )
    known = list(parts.markers["markers"]) if parts.markers else []
    in_reference = [] if parts.reference_label is None else sorted(set(parts.reference_label))
    labels = list(dict.fromkeys([*known, *in_reference, *order]))
    colours = palette(labels)
    threshold = float(uns.get("params", {}).get("unassigned_threshold", 0.5))
    expression = marker_expression(path, uns, parts, answers)  # read before any writing: its errors are a read's
    try:
        with atomic_folder(out_dir) as tmp:
            figures = Figures(tmp / "figures")
            if umap is not None:
                map_figures(figures, umap, obs, result, parts, colours)
            level_counts(figures, obs, result, colours)
            uncertainty_histograms(figures, obs, result, colours, threshold)
            if expression is not None:
                dotplot(figures, expression, parts.markers, order)
            (tmp / PAGE).write_text(render_page(path, k, uns, model, parts, figures, obs))
    except OSError as err:
        raise OutputError(f"could not write the report into {out_dir}: {err.strerror or err}") from err
    return out_dir / PAGE


def render_page(path: Path, k: str, uns: dict, model: dict, parts: ModelParts, figures: Figures, obs) -> str:
    overlap = dict(uns.get("gene_overlap", {}))
    pinned = f"{model.get('url', '')}#sha256={model.get('sha256')}" if model.get("sha256") else model.get("url", "")
    provenance = [
        ("model", f"{model.get('name', '')} {model.get('version', '')} ({model.get('family', '')})"),
        ("pinned URL to cite", pinned),
        ("sha256", model.get("sha256", "") or "(a local folder: no archive)"),
        ("model given as", model.get("reference", "")),
        ("uncertainty means", model.get("uncertainty", "")),
        ("runner version", uns.get("runner_version", "")),
        ("date", uns.get("date", "")),
        ("input", f"{uns.get('input', '')} ({uns.get('input_format', '')})"),
        ("counts", uns.get("params", {}).get("counts", "")),
        ("gene names", uns.get("params", {}).get("gene_names", "")),
        ("result key", k),
    ]
    genes = [
        ("model genes", overlap.get("model_genes", "")),
        ("present in the query", f"{overlap.get('present', '')} ({float(overlap.get('fraction', 0)):.1%})"),
        ("present before id mapping", overlap.get("present_before_mapping", "")),
        ("duplicate names summed", overlap.get("summed_duplicates", "")),
    ]
    notes = "".join(f'<p class="note">{html.escape(m)}</p>' for m in parts.missing)
    shown = "" if len(obs) <= MAX_POINTS else f" ({MAX_POINTS:,} of the {len(obs):,} cells drawn, at random)"
    markers = (
        _figure(
            figures, "dotplot", "marker genes of each class (the model's, from its reference) in each answer's cells"
        )
        + f"<p>{html.escape(parts.markers['method'])}.</p>"
        if parts.markers
        else "<p>No marker genes: see the note above.</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cellzoo report: {html.escape(path.name)}</title>
<style>{STYLE}</style></head><body>
<h1>cellzoo report: {html.escape(path.name)}</h1>
<p>{len(obs):,} cells annotated by <b>{html.escape(f"{model.get('name', '')} {model.get('version', '')}")}</b>
(key <code>{html.escape(k)}</code>).</p>{notes}
<h2>The query on the reference map</h2>
{_figure(figures, "map_labels", "query cells placed on the model's reference map, coloured by answer" + shown)}
{_figure(figures, "map_scores", "the same cells by uncertainty and by novelty" + shown)}
<h2>Answers at each level</h2>
{_figure(figures, "levels", "cells per answer, per compartment and per lineage")}
<h2>Uncertainty</h2>
{_figure(figures, "uncertainty", "uncertainty of the cells of each finest label")}
<h2>Marker genes</h2>
{markers}
<h2>Gene overlap</h2>
{_table(genes)}
<h2>Provenance</h2>
{_table(provenance)}
</body></html>
"""
