"""Lung benchmark (issue 14): leave one study out on the two lung studies, back-off, and cap & fill.

    python benchmarks/lung.py [--quick] [--docs-dir docs/benchmarks] [--data ../shared/data]

Prints the tables and writes ``OUT/lung.md``; ``main(argv)`` also returns the Markdown (for
``benchmarks/run.py``). ``--quick``: Tabula Sapiens -> Travaglini only, cellzoo linear and CellTypist, no
cap & fill (a few minutes).

1. **Leave one study out**: the `lung` recipe trained on one study (its labels harmonised alone by the
   recipe's rules: the recipe's ``files`` entries match by file name, so one reference path restricts it),
   tested on the other; cellzoo's three families and the peers on the same training cells.
2. **Back-off**: cellzoo linear with and without back-off on every cross-study query (the lung pair, and
   Kang 2018 / OneK1K through the `pbmc` recipe).
3. **Cap & fill**: the `lung` recipe on both studies with and without ``cap_per_class``, one donor of each
   study held out and scored.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import accuracy, peers
from benchmarks.accuracy import (
    METHODS,
    Query,
    Task,
    annotate_cellzoo,
    build_model,
    cellzoo_recipe,
    fmt,
    load_query,
    load_reference,
    reference_from_recipe,
    score,
)
from benchmarks.report import markdown_table
from model_zoo import build
from model_zoo.ontology import ontology_parser

TS = Query("Tabula Sapiens lung", "lung/tabula_sapiens_lung.h5ad", "cell_type_ontology_term_id", ontology=True)
TRAVAGLINI = Query("Travaglini 2020 lung", "lung/travaglini2020_lung.h5ad", "cell_ontology_id", ontology=True)
SPLITS = ((TS, TRAVAGLINI), (TRAVAGLINI, TS))  # (trained on, tested on)
DONOR = {TS.file: ("donor_id", "TSP14"), TRAVAGLINI.file: ("donor", "1")}  # held out in the cap & fill run
MIN_RECALL_CELLS = 5  # truth types with fewer query cells are left out of the recall table
CAP = 200  # cap & fill measured at this cap per class (the recipe does not use it: it did not help)
SHORT = {TS.name: "TS", TRAVAGLINI.name: "Travaglini"}


def term_name(term: str) -> str:
    return ontology_parser().get_term_label(term) if term.startswith("CL:") else term


def lung_recipe(name: str, **edits) -> dict:
    recipe, _ = build.load_recipe("lung")
    recipe["name"] = name
    recipe["reference"] |= edits
    return recipe


def subset_file(source: Path, keep: np.ndarray, folder: Path) -> Path:
    """The cells ``keep`` of ``source`` written to ``folder`` under the same name (so that the recipe's
    ``files`` entries still match it); temporary, never in the repository."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    adata = ad.read_h5ad(source)
    adata[keep].copy().write_h5ad(target)
    return target


# ---- 1. leave one study out ----


def loso(data: Path, work: Path, methods, splits) -> tuple[list[dict], list[str], dict]:
    """Score every method on each split; returns the rows, the notes of skipped runs, and the linear models
    (by split) for the back-off part."""
    rows, skipped, linear = [], [], {}
    for trained, tested in splits:
        recipe = lung_recipe(f"lung-{SHORT[trained.name].lower()}")
        task = Task(f"lung, trained on {trained.name}", (trained.file,), {}, "", (tested,))
        reference = reference_from_recipe(task, recipe, [data / trained.file])
        query = load_query(tested, data, reference)
        for method in methods:
            folder = work / f"loso-{SHORT[trained.name]}-{method.key}"
            for out in accuracy.apply_method(method, reference, [query], folder, skipped):
                scores = score(out.predictions, query.truth, reference.terms, exact_always=True)
                rows.append(
                    {"trained": trained.name, "tested": tested.name, "method": out.method, "cellzoo": out.cellzoo}
                    | scores
                    | {"train_s": out.train_s, "annotate_s": out.annotate_s, "classes": len(reference.terms)}
                )
        linear[(trained, tested)] = (build_model(cellzoo_recipe(reference, "linear"), reference.paths, work), query)
    return rows, skipped, linear


def loso_table(rows: list[dict]) -> str:
    header = ["trained on", "tested on", "method", "ontology acc.", "exact acc.", "macro-F1", "Unassigned"]
    header += ["answered finest", "mean depth", "ECE", "train s"]
    body = [
        [
            r["trained"],
            r["tested"],
            f"**{r['method']}**" if r["cellzoo"] else r["method"],
            *(fmt(r[k]) for k in ("accuracy", "exact", "macro_f1", "unassigned", "finest")),
            fmt(r["depth"], 1),
            fmt(r["ece"]),
            f"{r['train_s']:.0f}",
        ]
        for r in rows
    ]
    return markdown_table(header, body)


def recall_tables(rows: list[dict], counts: dict[str, dict[str, int]]) -> str:
    """Per split: truth types (with >= MIN_RECALL_CELLS cells) x methods, ontology-level recall."""
    parts = []
    for tested in dict.fromkeys(r["tested"] for r in rows):
        mine = [r for r in rows if r["tested"] == tested]
        sizes = counts[tested]
        types = sorted((t for t, n in sizes.items() if n >= MIN_RECALL_CELLS), key=lambda t: -sizes[t])
        header = ["truth type", "cells", *(r["method"] for r in mine)]
        body = [[term_name(t), str(counts[tested][t]), *(fmt(r["recall"].get(t), 2) for r in mine)] for t in types]
        parts.append(f"Tested on {tested} (trained on {mine[0]['trained']}):\n\n{markdown_table(header, body)}")
    return "\n\n".join(parts)


def family_verdict(rows: list[dict]) -> tuple[str, str]:
    """The family with the best mean ontology accuracy over the splits, and a sentence saying so."""
    families = {}
    for r in rows:
        if r["cellzoo"]:
            families.setdefault(r["method"], []).append(r["accuracy"])
    means = {family: float(np.mean(v)) for family, v in families.items()}
    best = max(means, key=means.get)
    listed = ", ".join(f"{f} {m:.3f}" for f, m in sorted(means.items(), key=lambda kv: -kv[1]))
    return best, f"Mean ontology-level accuracy over the two directions: {listed}. **{best}** is chosen."


# ---- 2. back-off ----


def backoff_rows(models: dict, work: Path) -> list[dict]:
    """cellzoo linear on each query with back-off (the default) and without (``backoff=False``)."""
    rows = []
    for model_dir, query, terms in models:  # terms: the model's label table (exact accuracy where comparable)
        for backoff in (True, False):
            predictions = annotate_cellzoo(query.path, model_dir, work, backoff=backoff)
            scores = score(predictions, query.truth, terms, exact_always=not terms)
            rows.append({"query": query.query.name, "backoff": backoff, "predictions": predictions} | scores)
    return rows


def backoff_table(rows: list[dict]) -> str:
    header = ["query", "back-off", "ontology acc.", "exact acc.", "macro-F1", "answered finest", "mean depth"]
    header += ["Unassigned"]
    body = [
        [
            r["query"],
            "on" if r["backoff"] else "off",
            *(fmt(r[k]) for k in ("accuracy", "exact", "macro_f1", "finest")),
            fmt(r["depth"], 1),
            fmt(r["unassigned"]),
        ]
        for r in rows
    ]
    return markdown_table(header, body)


def answers_of(rows: list[dict], query: str, truth_term: str, truth: np.ndarray) -> str:
    """How a query's cells of one truth type are answered, with and without back-off."""
    lines = []
    for r in (r for r in rows if r["query"] == query):
        cells = truth == truth_term
        answers = pd.Series(r["predictions"].label[cells]).value_counts(normalize=True).head(4)
        listed = ", ".join(f"`{label}` {share:.0%}" for label, share in answers.items())
        lines.append(
            f"- {query}, {term_name(truth_term)} ({cells.sum()} cells), back-off {'on' if r['backoff'] else 'off'}: "
            f"right {r['recall'][truth_term]:.0%}; answers {listed}."
        )
    return "\n".join(lines)


# ---- 3. cap & fill ----


def cap_and_fill(data: Path, work: Path) -> list[dict]:
    """Both studies minus one donor each, with and without ``cap_per_class``; scored on each held donor."""
    sources = [data / TS.file, data / TRAVAGLINI.file]
    train_paths, tests = [], []
    for source in sources:
        column, donor = DONOR[source.relative_to(data).as_posix()]
        held = ad.read_h5ad(source, backed="r").obs[column].astype(str).to_numpy() == donor
        train_paths.append(subset_file(source, ~held, work / "capfill-train"))
        tests.append((source, subset_file(source, held, work / "capfill-test"), donor))
    rows = []
    for label, edits in ((f"cap {CAP}", {"cap_per_class": CAP}), ("no cap", {})):
        recipe = lung_recipe(f"lung-both-{'cap' if edits else 'nocap'}", **edits)
        task = Task("lung, both studies", (), {}, "", ())
        reference = reference_from_recipe(task, recipe, train_paths)
        model_dir = build_model(cellzoo_recipe(reference, "linear"), train_paths, work)
        for source, test_path, donor in tests:
            query = next(q for q in (TS, TRAVAGLINI) if (data / q.file) == source)
            loaded = load_query(query, data, reference, test_path)
            predictions = annotate_cellzoo(test_path, model_dir, work)
            scores = score(predictions, loaded.truth, reference.terms, exact_always=True)
            per_source = pd.crosstab(reference.cells.labels, reference.cells.source)
            rows.append(
                {"setting": label, "study": query.name, "donor": donor, "cells": len(loaded.truth)}
                | scores
                | {"train_cells": len(reference.cells.labels), "by_source": per_source.sum().to_dict()}
            )
    return rows


def cap_table(rows: list[dict]) -> str:
    header = ["training", "training cells (by study)", "held-out donor", "cells", "ontology acc.", "exact acc."]
    header += ["macro-F1", "Unassigned"]
    body = [
        [
            r["setting"],
            f"{r['train_cells']} ({', '.join(f'{k}: {v}' for k, v in r['by_source'].items())})",
            f"{r['study']} {r['donor']}",
            str(r["cells"]),
            *(fmt(r[k]) for k in ("accuracy", "exact", "macro_f1", "unassigned")),
        ]
        for r in rows
    ]
    return markdown_table(header, body)


def cap_verdict(rows: list[dict]) -> str:
    capped = [r for r in rows if r["setting"].startswith("cap")]
    uncapped = [r for r in rows if r["setting"] == "no cap"]
    gains = [
        (c["study"], c["accuracy"] - u["accuracy"], c["macro_f1"] - u["macro_f1"])
        for c, u in zip(capped, uncapped, strict=True)
    ]
    said = "; ".join(f"{study}: accuracy {d_acc:+.3f}, macro-F1 {d_f1:+.3f}" for study, d_acc, d_f1 in gains)
    helps = np.mean([d for _, d, _ in gains]) + np.mean([d for _, _, d in gains]) > 0
    verdict = "helps" if helps else "does not help"
    return f"Cap & fill against no cap, per held-out donor: {said}. Verdict: it {verdict} on this split."


# ---- the report ----


def main(argv: list[str] | None = None) -> str:
    quick = "one direction, linear + CellTypist, no cap & fill"
    args, command = accuracy.part_arguments("lung.py", __doc__.splitlines()[0], "lung.md", quick, argv)
    start, load_start, env = time.perf_counter(), os.getloadavg()[0], accuracy.environment()
    methods = tuple(m for m in METHODS if not args.quick or m.key in ("linear", "celltypist"))
    splits = SPLITS[:1] if args.quick else SPLITS
    slow = tuple(m for m in methods if m.key == "scarches")  # minutes per reference and per query: last
    timings, rows, backoff, capped = {}, [], [], []
    args.docs_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cellzoo-lung-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        first, skipped, linear = loso(args.data, work, tuple(m for m in methods if m not in slow), splits)
        rows += first
        timings["leave one study out"] = time.perf_counter() - t
        t = time.perf_counter()
        pbmc = load_reference(accuracy.PBMC, args.data)
        pbmc_model = build_model(cellzoo_recipe(pbmc, "linear"), pbmc.paths, work)
        models = [(pbmc_model, load_query(q, args.data, pbmc), pbmc.terms) for q in accuracy.PBMC.queries]
        models += [(model_dir, query, {}) for model_dir, query in linear.values()]
        backoff += backoff_rows(models, work)
        timings["back-off"] = time.perf_counter() - t
        counts = {}
        for _, query in linear.values():
            names, sizes = np.unique(query.truth, return_counts=True)
            counts[query.query.name] = dict(zip(names, sizes.tolist(), strict=True))
        kang = next(q for _, q, _ in models if q.query.name == "Kang 2018")
        order = [trained.name for trained, _ in SPLITS]

        def save(left: str) -> str:  # the fragment so far: a stopped run still leaves what it measured
            rows.sort(key=lambda r: order.index(r["trained"]))  # stable: methods stay in their order
            status = f"\n**Incomplete run: {left} not measured yet.**\n" if left else ""
            run = (command, env, timings, start, load_start, status)
            text = report(rows, skipped, backoff, capped, counts, kang, *family_verdict(rows), *run)
            (args.docs_dir / "lung.md").write_text(text)
            return text

        rest = ["cap & fill"] if not args.quick else []
        rest += [f"{m.key} (leave one study out)" for m in slow]
        text = save(", ".join(rest))
        if not args.quick:
            t = time.perf_counter()
            capped += cap_and_fill(args.data, work)
            timings["cap & fill"] = time.perf_counter() - t
            text = save(", ".join(rest[1:]))
        if slow:
            t = time.perf_counter()
            rows += loso(args.data, work, slow, splits)[0]
            timings["scArches"] = time.perf_counter() - t
            text = save("")
    print(text)
    return text


def report(
    rows, skipped, backoff, capped, counts, kang, best, verdict, command, env, timings, start, load_start, status
):
    seconds = time.perf_counter() - start
    cd8 = "CL:0000625"
    parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items())
    skipped_lines = "".join(f"\n- Not run: {s}." for s in skipped)
    cap = (
        f"{cap_table(capped)}\n\n{cap_verdict(capped)}"
        if capped
        else "Not measured in this run (`--quick`, or stopped before): `python benchmarks/lung.py`."
    )
    return f"""## Lung: leave one study out, back-off, cap & fill

Generated by `{command}` on {dt.date.today().isoformat()} in {seconds / 60:.1f} min ({parts}; git {env["commit"]}).
Machine: {env["machine"]}; load average {load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end
(shared with other jobs: times are indicative). Versions: {env["versions"]}; CellTypist {peers.celltypist_version()}.
{status}
### Leave one study out
The `lung` recipe trained on one study alone (`model_zoo.build.prepare_reference` with that file only: its
Cell Ontology ids harmonised by the recipe's rules, types under 10 cells dropped, no cap),
tested on all cells of the other study, whose types are only partly the same (a type the
training study lacks can only be right at a coarser level). Every method is trained on the same cells; the
peers and their settings are those of the accuracy benchmark (CellTypist with its default lbfgs solver in its
own environment, scanpy ingest, the scArches scANVI recipe, and scArches' weighted kNN on its latent space).
cellzoo answers as `annotate` does by default (back-off, novelty). Scoring: **ontology acc.** = the answer
is the truth's term or an ancestor or descendant of it, `Unassigned` wrong; **exact acc.** = the most probable
class's id equals the truth's id; **macro-F1** over the truth's terms at the ontology level; **answered
finest** = share answered with a class (not backed off, not `Unassigned`); **mean depth** = number of Cell
Ontology ancestors of the answers given (higher = more specific).{skipped_lines}

{loso_table(rows)}

**Family.** {verdict} The `lung` recipe ships `{best.removeprefix("cellzoo ")}` accordingly (the recipe's `family`).

#### Recall per truth type (ontology level)
{recall_tables(rows, counts)}

### Back-off: more right answers, at what loss of specificity
cellzoo linear (`pbmc` recipe for Kang 2018 and OneK1K; the leave-one-study-out models for the lung pair),
`annotate` with back-off (default) and with `backoff=False` (the finest class, or `Unassigned` when
uncertain or novel). Exact accuracy is the finest class's (the same in both; n/a for the PBMC queries, whose
label sets differ from the reference's, e.g. `MNP` vs classical monocytes).

{backoff_table(backoff)}

{answers_of(backoff, "Kang 2018", cd8, kang.truth)}

### Cap & fill
The `lung` recipe on both studies less one donor each (Tabula Sapiens {DONOR[TS.file][1]}, Travaglini donor
{DONOR[TRAVAGLINI.file][1]}), with `cap_per_class` and without; cellzoo linear scored on the held-out
donors' cells.

{cap}

### Reproduce
    {command}
"""


if __name__ == "__main__":
    main()
