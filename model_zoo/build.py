"""Train a zoo model from a recipe and reference h5ad files: ``python -m model_zoo.build RECIPE --reference F``.

A recipe (``model_zoo/recipes/NAME.yaml``) is data: a family, the reference file(s) and how to read
their counts and labels, the label -> ontology table (or an obs column holding the ids), the family's
parameters, and cross-study queries to score. The result is a standard MLflow model directory with a
model card (``README.md``) inside it. ``cellzoo build`` runs this module in a subprocess (the runner
never imports ``model_zoo``) and then archives the directory.

Recipe ``reference`` fields: ``files`` (names, informative), ``label_column``, ``drop_labels``,
``counts`` (``X`` (default), ``raw.X`` or ``layers/NAME``), ``undo_log`` (``{base, size_factor_column}``:
the matrix holds ``log_base(counts / size_factor + 1)`` and is inverted, refused unless the result
is integer), ``batch_column`` (default: the file name when several files are given),
``ontology_column`` (labels' ontology ids from the data instead of a ``labels`` table),
``min_cells_per_label`` (with ``ontology_column``: rarer labels are dropped), ``harmonise`` (labels are
the cells' Cell Ontology ids, harmonised across files: :func:`model_zoo.harmonise.harmonise`),
``cap_per_class`` (cap & fill) and ``files`` entries that are mappings (``file`` and that file's own
``label_column`` / ``batch_column``). An ``evaluation`` query may name its ``gene_column`` (the ``var``
column whose names the runner would choose). ``novelty_calibration`` (one query in the same form, beside the
reference; its ``labels`` name the cells of the reference's own types) scales the novelty distance so that 0.5%
of that other study's cells are novel by it (:func:`calibrate_distance`): for a family whose space moves a
whole study away from the reference (``scanvi``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

from model_zoo import contract, novelty
from model_zoo.card import render_card
from model_zoo.family import FAMILIES, FamilyError, load_family
from model_zoo.metrics import expected_calibration_error, ontology_match
from model_zoo.pyfunc_io import Trained, python_model_predict

logger = logging.getLogger(__name__)

RECIPES_DIR = Path(__file__).parent / "recipes"
INTEGER_TOLERANCE = 1e-3  # how far from an integer an inverted log value may be (float32 rounding)
COUNT_CHECK_VALUES = 2_000_000
TIMING_CELLS = 10_000  # annotation time reported in the card: per this many cells


def novelty_note(calibration: dict | None = None) -> str:
    """What the model's novelty score is, for its metadata and card (``calibration``: :func:`calibrate_distance`'s
    record, when the distance is scaled to another study)."""
    beyond = f"{100 * (1 - novelty.QUANTILE):g}%"
    study = (
        f", then by {calibration['study_scale']}, the value that {beyond} of {calibration['n_cells']} cells of "
        f"another study ({calibration['file']}) exceed"
        if calibration
        else ""
    )
    return (
        f"how unlike the reference a cell is: the largest of (1) its mean distance to its {novelty.NEIGHBORS} "
        "nearest reference cells in the model's space against how far apart reference cells sit there (over the "
        "square root of the spread of its most probable class times that of its neighbours), divided by the value "
        f"that {beyond} of reference cells exceed{study}; (2) the shortfall of the share of its counts in the "
        f"model's genes against its class's reference cells (technical genes left out; 1.0 at the lower of the "
        f"held-out {beyond} quantile and {novelty.COMPOSITION_BOUND} of the share); and (3) the same shortfall "
        f"over its class's {novelty.MARKER_GENES} marker genes (1.0 at {novelty.MARKER_BOUND} of the share); above "
        "the runner's --novelty-threshold (1.0) a cell is 'Unassigned' (model_zoo.novelty)"
    )


class BuildError(Exception):
    """A recipe or reference that cannot be built; the message says what to fix."""


def load_recipe(name_or_path: str) -> tuple[dict, Path]:
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise BuildError(f"no recipe {name_or_path!r}; zoo recipes: {', '.join(known)} (or give a .yaml path)")
    recipe = yaml.safe_load(path.read_text())
    missing = [k for k in ("name", "version", "family", "reference") if k not in recipe]
    if not ({"ontology_column", "harmonise"} & set(recipe.get("reference", {}))) and "labels" not in recipe:
        missing.append("labels (or reference.ontology_column, or reference.harmonise)")
    if missing:
        raise BuildError(f"recipe {path} lacks {', '.join(missing)}")
    if recipe["family"] not in FAMILIES:
        raise BuildError(f"recipe {path}: unknown family {recipe['family']!r}; families: {', '.join(FAMILIES)}")
    return recipe, path


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass(frozen=True)
class Labelled:
    """Raw counts (cells x genes), gene names, one label per cell, the cells' obs table and the file (stem)
    each cell comes from."""

    counts: sp.csr_matrix
    genes: np.ndarray
    labels: np.ndarray
    obs: pd.DataFrame
    source: np.ndarray

    def subset(self, mask: np.ndarray) -> Labelled:
        return Labelled(self.counts[mask], self.genes, self.labels[mask], self.obs.iloc[mask], self.source[mask])


def _counts_matrix(adata, path: Path, spec: dict) -> sp.csr_matrix:
    """The raw counts named by ``spec['counts']`` (after ``undo_log``), checked to be integers."""
    where = str(spec.get("counts", "X"))
    if where == "X":
        matrix, var_names = adata.X, adata.var_names
    elif where == "raw.X" and adata.raw is not None:
        matrix, var_names = adata.raw.X, adata.raw.var_names
    elif where.startswith("layers/") and where.removeprefix("layers/") in adata.layers:
        matrix, var_names = adata.layers[where.removeprefix("layers/")], adata.var_names
    else:
        raise BuildError(
            f"{path} has no {where!r} (counts: X, raw.X or layers/NAME; layers: {', '.join(adata.layers) or 'none'})"
        )
    if list(var_names) != list(adata.var_names):
        raise BuildError(f"{path}: {where} has other genes than var; give counts with the genes of var_names")
    matrix = sp.csr_matrix(matrix, dtype=np.float64)
    if "undo_log" in spec:
        matrix = _undo_log(matrix, adata.obs, path, spec["undo_log"])
    sample = matrix.data[:COUNT_CHECK_VALUES]
    if (sample < 0).any() or (sample != np.round(sample)).any():
        raise BuildError(
            f"{path} {where} does not hold raw counts (non-integer or negative values); set the recipe's "
            "reference.counts to the layer with raw counts, or reference.undo_log if it is exactly invertible"
        )
    return matrix


def _undo_log(matrix: sp.csr_matrix, obs: pd.DataFrame, path: Path, spec: dict) -> sp.csr_matrix:
    """Invert ``log_base(counts / size_factor + 1)``; refused unless every value comes back an integer."""
    factors = obs[spec["size_factor_column"]].to_numpy(dtype=np.float64)
    counts = matrix.copy()
    counts.data = np.power(float(spec["base"]), counts.data) - 1.0
    counts = sp.csr_matrix(sp.diags(factors) @ counts)
    deviation = float(np.abs(counts.data - np.round(counts.data)).max()) if counts.nnz else 0.0
    if deviation > INTEGER_TOLERANCE:
        raise BuildError(
            f"{path}: undoing log{spec['base']}(counts / {spec['size_factor_column']} + 1) does not give integer "
            f"counts (a value is {deviation:.3g} from an integer): the matrix is not exactly invertible"
        )
    logger.info("undid log%s(x / size factor + 1): largest distance to an integer %.2g", spec["base"], deviation)
    counts.data = np.round(counts.data)
    counts.eliminate_zeros()
    return counts


def read_labelled(path: Path, label_column: str, keep: set[str] | None = None, spec: dict | None = None) -> Labelled:
    """The cells of an h5ad whose label is in ``keep`` (all when None); counts as ``spec`` says (default X)."""
    import anndata as ad

    adata = ad.read_h5ad(path)
    if label_column not in adata.obs:
        raise BuildError(f"{path} has no obs column {label_column!r}; columns: {', '.join(adata.obs.columns)}")
    labels = adata.obs[label_column].astype(str).to_numpy()
    mask = np.isin(labels, sorted(keep)) if keep is not None else np.ones(len(labels), dtype=bool)
    counts = _counts_matrix(adata, path, spec or {})
    source = np.full(adata.n_obs, path.stem, dtype=object)
    column = (spec or {}).get("gene_column")
    genes = (adata.var[column] if column else adata.var_names).to_numpy().astype(str)
    return Labelled(counts, genes, labels, adata.obs, source).subset(mask)


def file_spec(ref: dict, path: Path) -> dict:
    """The reference spec of one file: the recipe's ``reference``, with that file's entry of ``files`` (a
    mapping naming the file) over it, for references whose files name their columns differently."""
    for entry in ref.get("files") or []:
        if isinstance(entry, dict) and entry.get("file") == path.name:
            return ref | entry
    return ref


def read_reference(paths: list[Path], ref: dict, keep: set[str] | None) -> tuple[Labelled, np.ndarray | None]:
    """The cells of one or several reference files on their shared genes, and a batch per cell (or None):
    the files' ``batch_column`` (within each file, when there are several), else the file."""
    specs = [file_spec(ref, p) for p in paths]
    parts = [read_labelled(p, spec["label_column"], keep, spec) for p, spec in zip(paths, specs, strict=True)]
    genes = parts[0].genes
    for part in parts[1:]:
        genes = genes[np.isin(genes, part.genes)]
    if len(parts) > 1:
        logger.info("%d reference files share %d genes", len(parts), len(genes))

    def on_genes(part: Labelled) -> sp.csr_matrix:
        return part.counts[:, pd.Index(part.genes).get_indexer(genes)]

    counts = sp.vstack([on_genes(p) for p in parts]).tocsr()
    obs = pd.concat([p.obs for p in parts])
    source = np.concatenate([p.source for p in parts])
    reference = Labelled(counts, genes, np.concatenate([p.labels for p in parts]), obs, source)
    if any(spec.get("batch_column") for spec in specs):
        batches = [
            p.obs[spec["batch_column"]].astype(str).to_numpy() if spec.get("batch_column") else p.source
            for p, spec in zip(parts, specs, strict=True)
        ]
        batch = np.concatenate(batches).astype(object)
        return reference, (source + ":" + batch if len(parts) > 1 else batch)
    if len(parts) > 1:
        return reference, source.astype(str)
    return reference, None


def label_table(recipe: dict, reference: Labelled) -> dict[str, dict]:
    """Label -> {ontology_term_id, ontology_term_name}: the recipe's table, or the reference's id column."""
    ref = recipe["reference"]
    if "ontology_column" not in ref:
        return recipe["labels"]
    ids = reference.obs[ref["ontology_column"]].astype(str).to_numpy()
    table = pd.DataFrame({"label": reference.labels, "id": ids}).drop_duplicates("label").set_index("label")["id"]
    return {label: {"ontology_term_id": table[label], "ontology_term_name": label} for label in sorted(table.index)}


def query_frame(model_genes: np.ndarray, path: Path, spec: dict) -> tuple[Labelled, pd.DataFrame]:
    """A labelled query of another study (its cells of ``spec['labels']``) and the model's input for it: a
    DataFrame of the model's genes it has, with each cell's total over all its genes (so the novelty score sees
    it) beside them."""
    query = read_labelled(path, spec["label_column"], set(spec["labels"]), {"gene_column": spec.get("gene_column")})
    frame = pd.DataFrame.sparse.from_spmatrix(query.counts, columns=query.genes).sparse.to_dense()
    frame = frame.T.groupby(level=0).sum().T  # genes named twice are summed, as the runner sums them
    # the signature names the model's genes alone (MLflow would drop the other columns): each cell's total
    # over all its genes goes beside them
    totals = frame.loc[:, ~novelty.technical(frame.columns)].sum(axis=1)  # as the runner totals for the novelty
    return query, frame[[g for g in model_genes if g in frame.columns]].assign(**{contract.TOTAL_COUNTS: totals})


def evaluate_query(model, model_genes: np.ndarray, path: Path, spec: dict) -> dict:
    """Ontology-level accuracy, ECE and annotation time of a saved model on a labelled query of another study,
    scored as the runner answers by default: the answer after back-off, `Unassigned` counted wrong."""
    query, frame = query_frame(model_genes, path, spec)
    out = model.predict(frame)
    truth = np.array([spec["labels"][label] for label in query.labels])

    def right(ids) -> np.ndarray:
        return np.array([ontology_match(str(p), t) for p, t in zip(ids, truth, strict=True)])

    finest = right(out[contract.ONTOLOGY_TERM_ID])
    answered = right(out[contract.ANSWER_ONTOLOGY_TERM_ID])
    kind = out[contract.ANSWER_KIND].to_numpy()
    assigned = ~np.isin(kind, ["uncertain", "novel"])
    confidence = 1.0 - out[contract.UNCERTAINTY].to_numpy()
    return {
        "name": spec.get("name", path.name),
        "file": path.name,
        "file_sha256": sha256_file(path),
        "n_cells": len(query.labels),
        "model_genes_present": int(np.isin(model_genes, query.genes).sum()),
        "ontology_accuracy": round(float(answered.mean()), 4),  # what the runner answers: Unassigned is wrong
        "ontology_accuracy_finest": round(float(finest.mean()), 4),  # every cell's most probable class
        "ontology_accuracy_assigned_only": round(float(answered[assigned].mean()), 4) if assigned.any() else None,
        "unassigned_fraction": round(float(1 - assigned.mean()), 4),
        "novel_fraction": round(float(np.mean(kind == "novel")), 4),
        "coarser_fraction": round(float(np.mean(kind == "coarser")), 4),
        "ece": round(expected_calibration_error(confidence, finest), 4),
    }


def calibrate_distance(model_dir: Path, model_genes: np.ndarray, class_terms: list[str], path: Path, spec: dict):
    """The study scale of a saved model's distance (:func:`model_zoo.novelty.study_scale`) from the cells of
    another study's query (``spec``) whose label's term (``spec['labels']``) is one of the model's classes'
    ``class_terms`` or a relative of one (so that no cell of a type the model lacks sets it), mapped as the runner
    maps a query; a record for the model's metadata."""
    import mlflow

    model = mlflow.pyfunc.load_model(str(model_dir))
    query, frame = query_frame(model_genes, path, spec)
    known = {label for label, term in spec["labels"].items() if any(ontology_match(c, term) for c in class_terms)}
    keep = np.isin(query.labels, sorted(known))
    if not keep.any():
        raise BuildError(f"no cell of {path.name} has a label of the model's classes to calibrate the novelty on")
    model.predict(frame[keep])
    distance = model.unwrap_python_model().novelty_parts.get("distance")
    if distance is None or not np.isfinite(distance).all():
        raise BuildError(
            f"the model gave {path.name}'s cells no finite novelty distance to calibrate on (family "
            f"{model.metadata.metadata.get('family')!r}): remove 'novelty_calibration' from the recipe"
        )
    scale = novelty.study_scale(distance)
    return {
        "file": path.name,
        "file_sha256": sha256_file(path),
        "n_cells": int(keep.sum()),
        "novel_by_distance_before": round(float(np.mean(distance > 1.0)), 4),
        "study_scale": round(scale, 4),
    }


def with_study_scale(trained, scale: float):
    """``trained`` (a family's weights, or a :class:`~model_zoo.pyfunc_io.Trained`) with its distance's study
    scale set."""
    if isinstance(trained, Trained):
        return dataclasses.replace(trained, weights=with_study_scale(trained.weights, scale))
    return dataclasses.replace(trained, novelty_study_scale=scale)


def time_annotation(model, model_genes: np.ndarray, cells: Labelled, source: str, n_cells: int) -> dict:
    """Seconds the runner's path (CSR counts in model gene order, in one batch) takes for ``n_cells`` cells.

    The ``cells`` are repeated up to ``n_cells``, so the time is measured, not extrapolated.
    """
    order = pd.Index(cells.genes).get_indexer(model_genes)
    present = order >= 0
    counts = cells.counts[:, np.where(present, order, 0)]
    counts = sp.csr_matrix(counts.multiply(present.astype(np.float64)[None, :]))
    counts = counts[np.resize(np.arange(counts.shape[0]), n_cells)]
    params = {contract.GENES_PRESENT: [str(g) for g in model_genes[present]]}
    predict = python_model_predict(model)
    start = time.perf_counter()
    predict(counts, params=params)
    return {"file": source, "n_cells": n_cells, "seconds": round(time.perf_counter() - start, 1)}


def prepare_reference(recipe: dict, references: list[Path]) -> tuple[Labelled, np.ndarray | None, dict, dict]:
    """The recipe's training cells: (the cells with their class labels, a batch per cell or None, the label
    table class -> {ontology_term_id, ontology_term_name}, notes for the model's metadata).

    Labels come from the recipe's ``labels`` table, or from the data (``ontology_column``, with
    ``min_cells_per_label``), or, with ``harmonise``, are the cells' Cell Ontology ids harmonised across
    the files (:func:`model_zoo.harmonise.harmonise`; classes named by the ontology). ``cap_per_class``
    then draws each class's cells evenly from the files (:func:`model_zoo.harmonise.cap_and_fill`).
    """
    ref = recipe["reference"]
    for path in references:
        if not path.is_file():
            raise BuildError(f"reference file {path} does not exist")
    keep = set(recipe["labels"]) - set(ref.get("drop_labels", [])) if "labels" in recipe else None
    reference, batch = read_reference(references, ref, keep)
    notes: dict = {}
    if "harmonise" in ref:
        from model_zoo.harmonise import harmonise
        from model_zoo.ontology import ontology_parser

        terms, notes["harmonisation"] = harmonise(reference.labels, reference.source, **ref["harmonise"])
        kept = terms != ""
        names = {t: ontology_parser().get_term_label(t) for t in set(terms[kept])}
        labels = np.array([names.get(t, "") for t in terms], dtype=object)
        reference = dataclasses.replace(reference, labels=labels).subset(kept)
        batch = batch[kept] if batch is not None else None
        labels_table = {n: {"ontology_term_id": t, "ontology_term_name": n} for t, n in sorted(names.items())}
    elif keep is None:  # labels from the data: drop those too rare to learn and score
        names, sizes = np.unique(reference.labels, return_counts=True)
        common = np.isin(reference.labels, names[sizes >= int(ref.get("min_cells_per_label", 10))])
        logger.info(
            "kept %d of %d labels (min_cells_per_label)",
            int(np.isin(names, reference.labels[common]).sum()),
            len(names),
        )
        reference = reference.subset(common)
        batch = batch[common] if batch is not None else None
        labels_table = label_table(recipe, reference)
    else:
        labels_table = label_table(recipe, reference)
    if ref.get("cap_per_class"):
        from model_zoo.harmonise import cap_and_fill

        chosen = cap_and_fill(reference.labels, reference.source, int(ref["cap_per_class"]), seed=0)
        notes["cap_per_class"] = {"cap": int(ref["cap_per_class"]), "cells_before": len(reference.labels)}
        reference = reference.subset(chosen)
        batch = batch[chosen] if batch is not None else None
    classes, sizes = np.unique(reference.labels, return_counts=True)
    per_source = pd.crosstab(reference.labels, reference.source)
    notes["class_cells"] = {
        str(c): {"total": int(n), **{str(s): int(per_source.loc[c, s]) for s in per_source.columns}}
        for c, n in zip(classes, sizes, strict=True)
    }
    return reference, batch, labels_table, notes


MIN_PANEL_GENES = 10


def read_gene_list(path: Path) -> np.ndarray:
    """The genes of a query (an .h5ad: its ``var_names``) or of a gene list (one gene a line, or the first
    field of a csv/tsv line; ``#`` comments and a ``gene`` header skipped)."""
    if not path.is_file():
        raise BuildError(f"--genes-from {path} does not exist")
    if path.suffix == ".h5ad":
        import anndata as ad

        return ad.read_h5ad(path, backed="r").var_names.to_numpy().astype(str)
    fields = [line.replace("\t", ",").split(",")[0].strip() for line in path.read_text().splitlines()]
    genes = [f for f in fields if f and not f.startswith("#") and f.lower() not in ("gene", "genes", "symbol")]
    return np.unique(np.asarray(genes, dtype=str))


def restrict_to_panel(reference: Labelled, panel: np.ndarray, source: Path) -> tuple[Labelled, dict]:
    """The reference on the genes of ``panel`` alone (panel-exact training), and the note for the metadata."""
    kept = np.isin(reference.genes, panel)
    if kept.sum() < MIN_PANEL_GENES:
        raise BuildError(
            f"only {int(kept.sum())} of the {len(panel)} genes of {source} are in the reference (e.g. "
            f"{', '.join(panel[:3])}); name the genes as the reference does ({', '.join(reference.genes[:3])})"
        )
    digest = hashlib.sha256("\n".join(sorted(reference.genes[kept])).encode()).hexdigest()
    note = {"file": source.name, "genes_listed": len(panel), "genes_used": int(kept.sum()), "sha256": digest}
    restricted = Labelled(
        reference.counts[:, kept], reference.genes[kept], reference.labels, reference.obs, reference.source
    )
    return restricted, note


def build(
    recipe_ref: str,
    references: list[Path],
    out_dir: Path,
    overrides: dict | None = None,
    timing_cells: int = TIMING_CELLS,
    genes_from: Path | None = None,
) -> Path:
    """Train the recipe on ``references`` and save ``out_dir/NAME-VERSION`` (an MLflow model directory).

    ``overrides`` replace entries of the recipe's ``params`` (e.g. fewer epochs for a quick build);
    ``timing_cells`` cells of the first cross-study query are annotated to measure the time (0: skip);
    ``genes_from`` (a query .h5ad or a gene list) trains on exactly those genes (a targeted panel: MERFISH,
    Xenium, CosMx), as version ``VERSION+panel.<first 8 hex of the genes' sha256>``.
    """
    recipe, recipe_path = load_recipe(recipe_ref)
    recipe["params"] = {**(recipe.get("params") or {}), **(overrides or {})}
    try:
        family = load_family(recipe["family"])
    except FamilyError as err:
        raise BuildError(str(err)) from err
    ref = recipe["reference"]
    reference, batch, labels_table, notes = prepare_reference(recipe, references)
    calibration = _calibration(recipe, references)  # before training: a missing file fails fast
    if genes_from is not None:
        reference, notes["panel"] = restrict_to_panel(reference, read_gene_list(genes_from), genes_from)
        recipe["version"] = f"{recipe['version']}+panel.{notes['panel']['sha256'][:8]}"
        logger.info("panel-exact: %d of the panel's genes in the reference", notes["panel"]["genes_used"])
    counts, genes, labels = reference.counts, reference.genes, reference.labels
    logger.info("reference: %d cells, %d genes, %d classes", *counts.shape, len(set(labels)))
    trained, report = family.train.train(counts, genes, labels, recipe["params"], batch=batch)

    target = out_dir / f"{recipe['name']}-{recipe['version']}"
    if target.exists():
        raise BuildError(f"{target} exists already; remove it or choose another --out")
    metadata = {
        "name": recipe["name"],
        "version": str(recipe["version"]),
        "family": recipe["family"],
        "species": recipe.get("species", ""),
        "organism_ontology_term_id": recipe.get("organism_ontology_term_id", ""),
        "tissue": recipe.get("tissue", ""),
        "tissue_ontology_term_id": recipe.get("tissue_ontology_term_id", ""),
        "description": " ".join(str(recipe.get("description", "")).split()),
        "gene_id_type": ref.get("gene_id_type", "symbol"),
        "genes_artifact": "artifacts/genes.txt",
        "n_genes": len(trained.genes),
        "labels": {c: labels_table[c] for c in trained.classes},
        "input": "raw counts (non-negative integers), cells x model genes, in the order of genes.txt",
        "uncertainty": family.uncertainty,
        "novelty": novelty_note(),
        "cell_totals_exclude": novelty.TECHNICAL,  # the genes the runner leaves out of params['cell_totals']
        "query_mapping": family.query_mapping,
        "stores": family.stores,
        "training_reference": {
            "files": [{"file": p.name, "sha256": sha256_file(p)} for p in references],
            "source_url": ref.get("source_url", ""),
            "description": " ".join(str(ref.get("description", "")).split()),
            "licence": ref.get("licence", ""),
            "label_column": ref["label_column"],
            "counts": _counts_note(ref),
            "batch": ref.get("batch_column") or ("file" if len(references) > 1 else ""),
            "dropped_labels": list(ref.get("drop_labels", [])),
            "n_cells": int(counts.shape[0]),
            **notes,
        },
        "training": {k: v for k, v in report.items() if not k.startswith("held_out")} | {"cpu_cores": os.cpu_count()},
        "metrics": {k: v for k, v in report.items() if k.startswith("held_out")},
        "recipe": recipe_path.name,
        "built": dt.date.today().isoformat(),
    }
    metadata = _plain(metadata)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{target.name}.") as tmp:
        staging = Path(tmp) / target.name
        family.pyfunc.save_model(staging, trained, metadata["labels"], metadata)
        if calibration is not None:  # the distance scaled to another study: saved again with the scale
            terms = [entry["ontology_term_id"] for entry in metadata["labels"].values()]
            record = calibrate_distance(staging, trained.genes, terms, *calibration)
            trained = with_study_scale(trained, record["study_scale"])
            metadata["training"]["novelty_calibration"] = record
            metadata["novelty"] = novelty_note(record)
            shutil.rmtree(staging)
            family.pyfunc.save_model(staging, trained, metadata["labels"], metadata)
        save_reference_summary(staging, trained, counts, genes, labels)
        metadata["metrics"] |= _evaluate(staging, trained.genes, references, recipe, timing_cells)
        _rewrite_metadata(staging, metadata)
        (staging / "README.md").write_text(render_card(metadata))
        staging.rename(target)  # the model directory appears whole or not at all
    return target


def save_reference_summary(model_dir: Path, trained, counts: sp.csr_matrix, genes: np.ndarray, labels) -> None:
    """Store the reference backdrop (its cells' map coordinates and classes) and each class's marker genes
    over the model's genes (:func:`model_zoo.markers.marker_genes`) in the saved model at ``model_dir``."""
    from model_zoo.markers import marker_genes
    from model_zoo.pyfunc_io import save_reference_summary as save

    weights = getattr(trained, "weights", trained)  # a family's Trained, or the weights themselves
    in_model = pd.Index(genes).get_indexer(trained.genes)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    markers = marker_genes(counts[:, in_model], totals, np.asarray(trained.genes), labels)
    backdrop = np.asarray(weights.classes)[np.asarray(weights.reference_label, dtype=np.intp)]
    save(model_dir, weights.reference_umap, backdrop, markers)


def _counts_note(ref: dict) -> str:
    where = str(ref.get("counts", "X"))
    if "undo_log" not in ref:
        return f"raw counts from {where}"
    undo = ref["undo_log"]
    return (
        f"{where} holds log{undo['base']}(counts / {undo['size_factor_column']} + 1); raw counts recovered as "
        f"({undo['base']}^x - 1) * {undo['size_factor_column']}, checked to be integers within {INTEGER_TOLERANCE}"
    )


def _calibration(recipe: dict, references: list[Path]) -> tuple[Path, dict] | None:
    """The recipe's ``novelty_calibration`` query (beside the first reference) and its spec; None without one."""
    spec = recipe.get("novelty_calibration")
    if not spec:
        return None
    missing = [k for k in ("file", "label_column", "labels") if k not in spec] if isinstance(spec, dict) else []
    if not isinstance(spec, dict) or missing or not isinstance(spec["labels"], dict):
        what = f"it lacks {', '.join(missing)}" if missing else "give it as a mapping, its labels as a mapping"
        raise BuildError(
            "the recipe's novelty_calibration is a labelled query like an evaluation entry (file, label_column, "
            f"labels: label -> ontology term id): {what}"
        )
    path = references[0].parent / str(spec["file"])
    if not path.is_file():
        raise BuildError(
            f"the recipe calibrates the novelty distance on {spec['file']}, which is not beside the reference "
            f"({path.parent}): put it there, or remove 'novelty_calibration' from the recipe"
        )
    return path, spec


def _evaluate(model_dir: Path, genes: np.ndarray, references: list[Path], recipe: dict, timing_cells: int) -> dict:
    """Score the saved model (loaded as MLflow loads it) on the recipe's cross-study queries found (beside
    the first reference), and time it on ``timing_cells`` cells of the first one, else of the reference."""
    import mlflow

    data_dir = references[0].parent
    specs = [s for s in recipe.get("evaluation", []) if (data_dir / s["file"]).is_file()]
    model = mlflow.pyfunc.load_model(str(model_dir))
    scores = {"cross_study": [evaluate_query(model, genes, data_dir / s["file"], s) for s in specs]}
    if timing_cells:
        if specs:
            source = data_dir / specs[0]["file"]
            cells = read_labelled(source, specs[0]["label_column"], set(specs[0]["labels"]))
        else:
            source, cells = (
                references[0],
                read_labelled(references[0], recipe["reference"]["label_column"], None, recipe["reference"]),
            )
        scores["annotation_time"] = time_annotation(model, genes, cells, source.name, timing_cells)
    return scores


def _plain(obj):
    """JSON/YAML-safe copy (numpy scalars and strings become Python ones)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _rewrite_metadata(model_dir: Path, metadata: dict) -> None:
    mlmodel = model_dir / "MLmodel"
    doc = yaml.safe_load(mlmodel.read_text())
    doc["metadata"] = _plain(metadata)
    mlmodel.write_text(yaml.safe_dump(doc, sort_keys=False))


def _parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise BuildError(f"--param expects KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_zoo.build", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="zoo recipe name (model_zoo/recipes/NAME.yaml) or a recipe .yaml path")
    parser.add_argument(
        "--reference", required=True, type=Path, action="append", help="reference .h5ad (repeat for several files)"
    )
    parser.add_argument("--out", type=Path, default=Path("build"), help="folder for the model directory")
    parser.add_argument("--param", action="append", default=[], help="KEY=VALUE overriding a recipe parameter")
    parser.add_argument(
        "--timing-cells", type=int, default=TIMING_CELLS, help="cells annotated to time the model (0: skip)"
    )
    parser.add_argument(
        "--genes-from", type=Path, help="train on exactly the genes of this query .h5ad or gene list (a panel)"
    )
    parser.add_argument("--tracking-uri", help="MLflow tracking server to log the build to (run, metrics, model)")
    parser.add_argument("--register", help="add the logged model to the Model Registry under this name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.register and not args.tracking_uri:
        print(
            "error: --register needs a tracking server: pass --tracking-uri or set $MLFLOW_TRACKING_URI",
            file=sys.stderr,
        )
        return 2
    try:
        overrides = dict(_parse_override(p) for p in args.param)
        target = build(args.recipe, args.reference, args.out, overrides, args.timing_cells, args.genes_from)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.tracking_uri:
        import mlflow

        from model_zoo.tracking import log_build

        recipe, recipe_path = load_recipe(args.recipe)
        try:
            params = {**(recipe.get("params") or {}), **overrides}
            log_build(target, recipe_path, params, args.tracking_uri, args.register)
        except (mlflow.exceptions.MlflowException, OSError) as err:
            print(f"error: built {target}, but could not log it to {args.tracking_uri}: {err}", file=sys.stderr)
            return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
