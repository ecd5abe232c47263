"""Model cards: a Markdown page rendered from a model's MLmodel metadata (one source of truth)."""

from __future__ import annotations

from model_zoo.harmonise import DROPPED_RARE

HELD_OUT_ROWS = {  # metrics key -> row name in the held-out table
    "held_out": "shipped",
    "held_out_uncalibrated": "uncalibrated (T = 1)",
}
CROSS_STUDY_COLUMNS = [
    "name",
    "n_cells",
    "model_genes_present",
    "ontology_accuracy",
    "ontology_accuracy_finest",
    "ontology_accuracy_assigned_only",
    "unassigned_fraction",
    "novel_fraction",
    "coarser_fraction",
    "ece",
]


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def _references(ref: dict) -> str:
    files = ref.get("files") or [{"file": ref.get("file", ""), "sha256": ref.get("sha256", "")}]
    return ", ".join(f"`{f['file']}` (sha256 `{f['sha256']}`)" for f in files)


def render_card(meta: dict) -> str:
    ref = meta["training_reference"]
    training = dict(meta["training"])
    params = training.pop("params", {})
    seconds = training.pop("training_seconds", "")
    cores = training.pop("cpu_cores", "")
    held = [
        {"probabilities": HELD_OUT_ROWS.get(k, k.removeprefix("held_out_")), **v}
        for k, v in meta["metrics"].items()
        if k.startswith("held_out")
    ]
    class_cells = ref.get("class_cells") or {}
    labels = [{"label": k, **v, **_cells(class_cells.get(k))} for k, v in meta["labels"].items()]
    label_columns = ["label", "ontology_term_id", "ontology_term_name"] + (
        ["cells", "reliability"] if class_cells else []
    )
    cross = meta["metrics"].get("cross_study", [])
    cross_table = _table(cross, CROSS_STUDY_COLUMNS) if cross else "None scored."
    calibration = training.get("novelty_calibration")
    if calibration:
        cross_table += (
            f"\nThe novelty distance is scaled to `{calibration['file']}` (`novelty_calibration` above): a query of "
            "that file says nothing about how many cells of another study the novelty score leaves `Unassigned`.\n"
        )
    details = [{"what": k, "value": v} for k, v in training.items()]
    return f"""# Model card: {meta["name"]} {meta["version"]}

{meta["description"]}

| | |
|---|---|
| family | `{meta["family"]}` |
| species | {meta["species"]} ({meta["organism_ontology_term_id"]}) |
| tissue | {meta["tissue"]} ({meta["tissue_ontology_term_id"]}) |
| input | {meta["input"]} |
| gene ids | {meta["gene_id_type"]}; {meta["n_genes"]} genes in `{meta["genes_artifact"]}` |
| uncertainty | {meta["uncertainty"]} |
| novelty | {meta.get("novelty", "not computed (a model built before the novelty score)")} |
| built | {meta["built"]} from recipe `{meta["recipe"]}` |

## Training data
{ref["description"]} ({_references(ref)}), source: {ref["source_url"]};
licence: {ref["licence"]}. Counts: {ref.get("counts", "raw counts")}. Labels from `obs['{ref["label_column"]}']`,
cells labelled {", ".join(repr(x) for x in ref["dropped_labels"]) or "nothing"} dropped: {ref["n_cells"]} cells.
Batch: {ref.get("batch") or "none"}. The model stores {meta.get("stores", "learned parameters, not the expression")}.

Training took **{seconds} s** on {cores} CPU cores. Parameters: `{params}`.

{_table(details, ["what", "value"])}
## Classes
{_table(labels, label_columns)}{_harmonisation(ref)}{_panel(ref)}
## Held-out reference cells (same study)
{_table(held, ["probabilities", "accuracy", "macro_f1", "ece", "n_cells"])}
## Cross-study queries (ontology level)
A prediction counts as right when its term is the truth's term or an ancestor/descendant of it
(Cell Ontology; other ids, such as Cellosaurus cell lines, must match exactly).
`ontology_accuracy` is what the runner answers by default (back-off to a common ancestor, `Unassigned`
when uncertain or novel, which counts as wrong); "finest" scores every cell's most probable class;
"assigned only" leaves the `Unassigned` cells out; `novel_fraction` and `coarser_fraction` are the shares
answered `Unassigned` as novel and with a common ancestor. ECE is of the reported confidence
(1 - uncertainty) against the finest guess's ontology-level correctness, over all cells.

{cross_table}
## Annotation time
{_timing(meta["metrics"].get("annotation_time"))}
"""


FEW_CELLS = 30  # a class trained on fewer cells than this is marked provisional in the card


def _cells(counts: dict | None) -> dict:
    """The ``cells`` (total, and per reference file) and ``reliability`` columns of a class."""
    if not counts:
        return {}
    total = counts["total"]
    per_file = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "total")
    reliability = f"provisional: fewer than {FEW_CELLS} cells" if total < FEW_CELLS else "ok"
    return {"cells": f"{total} ({per_file})", "reliability": reliability}


def _harmonisation(ref: dict) -> str:
    """How the studies' labels became the classes, and the types the model does not know."""
    rows = ref.get("harmonisation")
    if not rows:
        return ""
    table = [
        {
            "label in the data": f"{r['name']} ({r['ontology_term_id']})",
            "cells": ", ".join(f"{k} {v}" for k, v in r["cells"].items()),
            "fate": r["fate"],
        }
        for r in rows
    ]
    unknown = [r["name"] for r in rows if DROPPED_RARE in r["fate"]]
    cap = ref.get("cap_per_class")
    capped = (
        f"\nCap & fill: each class at most {cap['cap']} cells, drawn evenly from the reference files "
        f"({cap['cells_before']} cells before).\n"
        if cap
        else ""
    )
    return f"""
### Labels harmonised across the reference files
Each cell's Cell Ontology id; a type labelled finely in one file and coarsely in another is trained at the
coarser term, types with too few cells are dropped (model_zoo/harmonise.py). **Types the model does not
know** (too few cells; such cells should come out coarser or `Unassigned`): {", ".join(unknown) or "none"}.
{capped}
{_table(table, ["label in the data", "cells", "fate"])}"""


def _panel(ref: dict) -> str:
    panel = ref.get("panel")
    if not panel:
        return ""
    return (
        f"\n### Panel-exact\nTrained on exactly the genes of `{panel['file']}`: {panel['genes_used']} of its "
        f"{panel['genes_listed']} genes are in the reference (gene list sha256 `{panel['sha256']}`).\n"
    )


def _timing(timing: dict | None) -> str:
    if not timing:
        return "Not measured."
    return (
        f"**{timing['seconds']} s** for {timing['n_cells']} cells (cells of `{timing['file']}` repeated), one "
        "`predict` call on CSR counts in model gene order as the runner makes it, on the build machine's CPU."
    )
