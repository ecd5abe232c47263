"""Model cards: a Markdown page rendered from a model's MLmodel metadata (one source of truth)."""

from __future__ import annotations

HELD_OUT_ROWS = {  # metrics key -> row name in the held-out table
    "held_out": "shipped",
    "held_out_uncalibrated": "uncalibrated (T = 1)",
}
CROSS_STUDY_COLUMNS = [
    "name",
    "n_cells",
    "model_genes_present",
    "ontology_accuracy",
    "ontology_accuracy_no_threshold",
    "ontology_accuracy_assigned_only",
    "unassigned_fraction",
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
    labels = [{"label": k, **v} for k, v in meta["labels"].items()]
    cross = meta["metrics"].get("cross_study", [])
    cross_table = _table(cross, CROSS_STUDY_COLUMNS) if cross else "None scored."
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
| built | {meta["built"]} from recipe `{meta["recipe"]}` |

## Training data
{ref["description"]} ({_references(ref)}), source: {ref["source_url"]};
licence: {ref["licence"]}. Counts: {ref.get("counts", "raw counts")}. Labels from `obs['{ref["label_column"]}']`,
cells labelled {", ".join(repr(x) for x in ref["dropped_labels"]) or "nothing"} dropped: {ref["n_cells"]} cells.
Batch: {ref.get("batch") or "none"}. The model stores {meta.get("stores", "learned parameters, not the expression")}.

Training took **{seconds} s** on {cores} CPU cores. Parameters: `{params}`.

{_table(details, ["what", "value"])}
## Classes
{_table(labels, ["label", "ontology_term_id", "ontology_term_name"])}
## Held-out reference cells (same study)
{_table(held, ["probabilities", "accuracy", "macro_f1", "ece", "n_cells"])}
## Cross-study queries (ontology level)
A prediction counts as right when its term is the truth's term or an ancestor/descendant of it
(Cell Ontology; other ids, such as Cellosaurus cell lines, must match exactly).
`ontology_accuracy` is what the runner gives by default: cells above the default uncertainty
threshold (0.5) are `Unassigned` and count as wrong; "no threshold" scores every cell's top label;
"assigned only" leaves the `Unassigned` cells out. ECE is of the reported confidence
(1 - uncertainty) against ontology-level correctness, over all cells.

{cross_table}
## Annotation time
{_timing(meta["metrics"].get("annotation_time"))}
"""


def _timing(timing: dict | None) -> str:
    if not timing:
        return "Not measured."
    return (
        f"**{timing['seconds']} s** for {timing['n_cells']} cells (cells of `{timing['file']}` repeated), one "
        "`predict` call on CSR counts in model gene order as the runner makes it, on the build machine's CPU."
    )
