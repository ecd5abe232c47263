"""Model cards: a Markdown page rendered from a model's MLmodel metadata (one source of truth)."""

from __future__ import annotations

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


def render_card(meta: dict) -> str:
    ref = meta["training_reference"]
    training = meta["training"]
    held = meta["metrics"]["held_out"]
    raw = meta["metrics"]["held_out_uncalibrated"]
    labels = [{"label": k, **v} for k, v in meta["labels"].items()]
    cross = meta["metrics"].get("cross_study", [])
    cross_table = _table(cross, CROSS_STUDY_COLUMNS) if cross else "None scored."
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
{ref["description"]} (`{ref["file"]}`, sha256 `{ref["sha256"]}`), source: {ref["source_url"]};
licence: {ref["licence"]}. Labels from `obs['{ref["label_column"]}']`, cells labelled
{", ".join(repr(x) for x in ref["dropped_labels"]) or "nothing"} dropped: {ref["n_cells"]} cells. The model
stores learned parameters and per-cell PCA/UMAP coordinates of the reference, not its expression.

Split (stratified, seed {training["params"]["seed"]}): {training["n_cells"]["train"]} cells to train,
{training["n_cells"]["calibration"]} to fit the temperature ({training["temperature"]}), {training["n_cells"]["test"]}
held out to measure. Genes: {training["n_genes"]["candidates"]} detected in >= {training["params"]["min_cells"]} cells,
{training["n_genes"]["selected"]} selected (top {training["params"]["top_genes"]} |coef| per class).
Training took {training["training_seconds"]} s. Parameters: `{training["params"]}`.

## Classes
{_table(labels, ["label", "ontology_term_id", "ontology_term_name"])}
## Held-out reference cells (same study)
| probabilities | accuracy | macro-F1 | ECE | cells |
|---|---|---|---|---|
| calibrated (shipped) | {held["accuracy"]} | {held["macro_f1"]} | {held["ece"]} | {held["n_cells"]} |
| uncalibrated (T = 1) | {raw["accuracy"]} | {raw["macro_f1"]} | {raw["ece"]} | {raw["n_cells"]} |

## Cross-study queries (Cell Ontology level)
A prediction counts as right when its term is the truth's term or an ancestor/descendant of it.
`ontology_accuracy` is what the runner gives by default: cells above the default uncertainty
threshold (0.5) are `Unassigned` and count as wrong; "no threshold" scores every cell's top label;
"assigned only" leaves the `Unassigned` cells out. ECE is of the reported confidence
(1 - uncertainty) against ontology-level correctness, over all cells.

{cross_table}
"""
