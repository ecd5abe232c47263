"""Accuracy benchmark (issue 6): cellzoo's model families beside CellTypist, scanpy ingest and the scArches
scANVI recipe, all trained on the same reference cells and scored on other studies and technologies.

    python benchmarks/accuracy.py [--quick] [--docs-dir docs/benchmarks] [--data ../shared/data]

Prints the tables and writes ``OUT/accuracy.md`` (a Markdown fragment) and ``OUT/accuracy_*.png``;
``main(argv)`` also returns the Markdown (for ``benchmarks/run.py``). ``--quick`` runs the lung cell
lines only (a few minutes). Every setting and scoring rule is stated in the fragment itself.

cellzoo models are built with ``model_zoo.build.build`` (the code of ``cellzoo build``) from the zoo
recipes, the family and the held-out class changed in a copy of the recipe, and annotate through
``runner.annotate.annotate`` (the code of ``annotate``), so what is scored is what users get.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

if not __package__:  # run as a script (python benchmarks/accuracy.py): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import peers
from benchmarks.report import markdown_table, package_version
from model_zoo import build
from model_zoo.metrics import expected_calibration_error, ontology_macro_f1, ontology_match
from model_zoo.ontology import term_lineage
from runner.annotate import annotate
from runner.errors import CellzooError
from runner.genes import align_genes
from runner.keys import UNASSIGNED, ResultKeys
from runner.options import CheckOptions, RunOptions, split_options

logger = logging.getLogger("benchmarks.accuracy")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "docs" / "benchmarks"
THRESHOLD = 0.5  # uncertainty above which a cell is flagged: the runner's default, CellTypist's p_thres
SEED = 0
KEY = "zoo"  # --key-added of the cellzoo runs
N_BINS = 10  # of the ECE and the reliability plot
COLLAPSED = 0.9  # a method that gives this share of a query's cells one label is pointed out in the fragment
# feature selection as the linear family, otherwise CellTypist's defaults (its lbfgs LogisticRegression), run in
# its own environment (benchmarks/peers.py: celltypist 1.7.1 needs scikit-learn < 1.8)
CELLTYPIST = {"feature_selection": True, "top_genes": 300, "random_state": SEED}
KNN_NEIGHBORS = 50  # the scArches / HLCA weighted kNN label transfer
INGEST = {"n_hvg": 2000, "n_pcs": 50, "n_neighbors": 15}
SCARCHES_MODEL = {  # the scArches scANVI recipe (scArches / scvi-tools "scArches" tutorial)
    "n_layers": 2,
    "n_latent": 30,
    "encode_covariates": True,
    "deeply_inject_covariates": False,
    "use_layer_norm": "both",
    "use_batch_norm": "none",
}
SCARCHES_TRAIN = {
    "n_hvg": 2000,  # seurat_v3 on the reference's raw counts
    # the tutorial keeps scvi-tools' default, 400 epochs at these sizes: 0.4-0.8 s per epoch on PBMC here (2
    # shared cores), 3-5 min per reference; capped at the budget of cellzoo's scanvi family (100) to keep the
    # whole run under 30 min
    "scvi_epochs": 100,
    "scanvi_epochs": 20,
    "n_samples_per_label": 100,
    "query_epochs": 100,
    "check_val_every_n_epoch": 10,
}


@dataclass(frozen=True)
class Query:
    name: str
    file: str  # relative to the data folder
    label_column: str
    ontology: bool = False  # the label column holds Cell Ontology ids (else mapped by labels_to_ontology.csv)
    species: str = "human"  # another species is annotated by cellzoo with species_map=True


@dataclass(frozen=True)
class Task:
    name: str
    references: tuple[str, ...]  # files relative to the data folder
    recipes: dict[str, str]  # cellzoo family -> the zoo recipe it is built from
    held_out: str  # reference label left out of training in the out-of-distribution run
    queries: tuple[Query, ...]


PBMC = Task(
    "PBMC, cross-study",
    ("pbmc/soupx_pbmc4k.h5ad",),
    {"linear": "pbmc", "xgboost": "pbmc", "scanvi": "pbmc-scanvi"},
    "B",
    (
        Query("Kang 2018", "pbmc/kang2018_pbmc.h5ad", "cluster_id"),
        Query("OneK1K", "pbmc/onek1k_pbmc.h5ad", "cell_type"),
    ),
)
LUNG = Task(
    "lung cell lines, cross-technology",
    ("lung_cell_lines/cellbench_celseq2_5cl_p1.h5ad", "lung_cell_lines/cellbench_celseq2_5cl_p2.h5ad"),
    dict.fromkeys(("linear", "xgboost", "scanvi"), "lung-cell-lines"),
    "H2228",
    (
        Query("CellBench Drop-seq", "lung_cell_lines/cellbench_dropseq_3cl.h5ad", "cell_line"),
        Query("CellBench CEL-seq2 3 lines", "lung_cell_lines/cellbench_celseq2_3cl.h5ad", "cell_line"),
    ),
)


@dataclass(frozen=True)
class Reference:
    """The training cells of one run (all reference classes, or all but ``held_out``)."""

    task: Task
    paths: list[Path]
    cells: build.Labelled  # raw counts, genes, labels
    batch: np.ndarray | None  # one per cell when the reference has several files
    terms: dict[str, str]  # label -> ontology id (Cell Ontology, or Cellosaurus for cell lines)
    gene_id_type: str
    held_out: str | None
    recipe: dict | None = None  # what cellzoo is built from (family set per method); None: the task's recipes


@dataclass(frozen=True)
class QueryData:
    query: Query
    path: Path
    truth: np.ndarray  # ontology id per cell
    counts: ad.AnnData  # raw counts on the reference genes the query has, gene ids mapped as `annotate` maps them


@dataclass(frozen=True)
class Predictions:
    label: np.ndarray  # the reported label per cell: a reference label or 'Unassigned'
    top_label: np.ndarray  # the most probable label: what the reported confidence is about
    uncertainty: np.ndarray | None  # 1 - the reported confidence; None when the method reports none
    genes: str  # the method's genes found in the query, "present/used"
    terms: np.ndarray | None = None  # ontology id of each `label` when it may lie outside the label table
    top_terms: np.ndarray | None = None  # ontology id of each `top_label`, likewise (cellzoo's finest guess)
    novelty: np.ndarray | None = None  # cellzoo's novelty score (> 1: unlike the reference)
    kind: np.ndarray | None = None  # cellzoo's answer kind: finest, coarser, uncertain, novel, no_signal
    abstained: np.ndarray | None = None  # the method's own abstention, when it has one (CellTypist's p_thres)
    lineage_terms: np.ndarray | None = None  # cellzoo's answer at the lineage level (K_lineage's id, '' Unassigned)


Annotator = Callable[[QueryData, Path], dict[str, Predictions]]  # a query -> predictions by table row


def load_reference(task: Task, data: Path, held_out: str | None = None) -> Reference:
    """The reference cells as the task's `linear` recipe reads them, without ``held_out``'s cells."""
    recipe, _ = build.load_recipe(task.recipes["linear"])
    spec = recipe["reference"]
    keep = set(recipe["labels"]) - set(spec.get("drop_labels", [])) - {held_out}
    paths = [data / file for file in task.references]
    cells, batch = build.read_reference(paths, spec, keep)
    terms = {label: entry["ontology_term_id"] for label, entry in recipe["labels"].items()}
    return Reference(task, paths, cells, batch, terms, spec.get("gene_id_type", "symbol"), held_out)


def truth_terms(data: Path, file: str, labels) -> np.ndarray:
    """Ontology ids of a query's labels, from ``labels_to_ontology.csv`` (rows for ``folder/*`` too)."""
    with open(data / "labels_to_ontology.csv") as fh:
        table = {(r["dataset"], r["label"]): r["ontology_term_id"] for r in csv.DictReader(fh)}
    folder = file.split("/")[0] + "/*"
    return np.array([table.get((file, str(label))) or table[(folder, str(label))] for label in labels])


def load_query(query: Query, data: Path, reference: Reference, path: Path | None = None) -> QueryData:
    """The query's truth and, for the peers, its raw counts on the reference's genes (runner's gene mapping);
    ``path``: read the cells from there instead of the data folder (a subset, recovered counts)."""
    path = path or data / query.file
    adata = ad.read_h5ad(path)
    genes = reference.cells.genes
    alignment = align_genes(adata.var, genes, model_id_type=reference.gene_id_type, species="human")
    counts = sp.csr_matrix(sp.csr_matrix(adata.X, dtype=np.float32) @ alignment.matrix)[:, alignment.present]
    var = pd.DataFrame(index=genes[alignment.present])
    aligned = ad.AnnData(counts, obs=pd.DataFrame(index=adata.obs_names), var=var)
    labels = adata.obs[query.label_column]
    truth = labels.astype(str).to_numpy() if query.ontology else truth_terms(data, query.file, labels)
    return QueryData(query, path, truth, aligned)


def reference_from_recipe(task: Task, recipe: dict, paths: list[Path], held_out: str | None = None) -> Reference:
    """The training cells of ``recipe`` on ``paths`` (``model_zoo.build.prepare_reference``: harmonised labels,
    cap & fill), as every method is trained on them; cellzoo is built from the same recipe and files."""
    cells, batch, table, _ = build.prepare_reference(recipe, paths)
    terms = {label: entry["ontology_term_id"] for label, entry in table.items()}
    gene_id_type = recipe["reference"].get("gene_id_type", "symbol")
    return Reference(task, paths, cells, batch, terms, gene_id_type, held_out, recipe)


def log_cp10k(counts, genes) -> ad.AnnData:
    """log1p of counts per 10,000 per cell (over the genes given): the input of CellTypist and ingest."""
    import scanpy as sc

    adata = ad.AnnData(sp.csr_matrix(counts, dtype=np.float32), var=pd.DataFrame(index=np.asarray(genes, dtype=str)))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


# ---- the methods: each trains on a Reference and returns an Annotator ----


def code_state() -> str:
    """The state of model_zoo's code (git tree and uncommitted changes): part of a cached model's key."""
    git = ["git", "-C", str(ROOT)]
    tree = subprocess.run([*git, "rev-parse", "HEAD:model_zoo"], capture_output=True, text=True, check=False).stdout
    diff = subprocess.run([*git, "diff", "HEAD", "--", "model_zoo"], capture_output=True, text=True, check=False).stdout
    return hashlib.sha256((tree + diff).encode()).hexdigest()


def build_model(recipe: dict, paths: list[Path], work: Path) -> Path:
    """``model_zoo.build.build`` of ``recipe`` on ``paths``, cached under the bench folder by the recipe, the
    files' contents and model_zoo's code (several benchmarks train the same models)."""
    recipe = {k: v for k, v in recipe.items() if k != "evaluation"}  # scored by the benchmarks, not by build
    text = yaml.safe_dump(recipe, sort_keys=True)
    key = hashlib.sha256("\n".join([text, code_state(), *(build.sha256_file(p) for p in paths)]).encode())
    cached = peers.bench_dir() / "models" / key.hexdigest()[:16]
    target = cached / f"{recipe['name']}-{recipe['version']}"
    if target.is_dir():
        logger.info("%s: cached model %s", recipe["name"], target)
        return target
    recipe_path = work / f"{recipe['name']}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return build.build(str(recipe_path), paths, cached, timing_cells=0)


def cellzoo_recipe(reference: Reference, family: str) -> dict:
    """The recipe of ``family``: the reference's own recipe, or the task's zoo recipe with the held-out class
    added to ``drop_labels``."""
    if reference.recipe is not None:
        recipe = yaml.safe_load(yaml.safe_dump(reference.recipe))  # a copy
    else:
        recipe, _ = build.load_recipe(reference.task.recipes[family])
        dropped = [*recipe["reference"].get("drop_labels", []), *([reference.held_out] if reference.held_out else [])]
        recipe["reference"]["drop_labels"] = dropped
    recipe["family"] = family
    suffix = f"-without-{reference.held_out}" if reference.held_out else ""
    recipe["name"] = f"{recipe['name']}-{family}{suffix}".replace(" ", "-").replace(":", "").replace(",", "")
    return recipe


def cellzoo_predictions(result: ad.AnnData, key: str = KEY) -> Predictions:
    """What an annotated h5ad holds for key ``key``, as a row of the tables."""
    keys = ResultKeys(key)
    obs = result.obs
    overlap = result.uns[key]["gene_overlap"]
    lineage = keys.level_ontology_term_id("lineage")  # absent for models without levels
    return Predictions(
        label=obs[keys.predicted].astype(str).to_numpy(),
        top_label=obs[keys.finest].astype(str).to_numpy(),
        uncertainty=obs[keys.uncertainty].to_numpy(dtype=float),
        genes=f"{overlap['present']}/{overlap['model_genes']}",
        terms=obs[keys.ontology_term_id].astype(str).to_numpy(),
        top_terms=obs[keys.finest_ontology_term_id].astype(str).to_numpy(),
        novelty=obs[keys.novelty].to_numpy(dtype=float),
        kind=obs[keys.answer_kind].astype(str).to_numpy(),
        lineage_terms=obs[lineage].astype(str).to_numpy() if lineage in obs else None,
    )


def annotated_by_cellzoo(path: Path, model_dir: Path, tmp: Path, **options) -> ad.AnnData:
    """``runner.annotate.annotate`` of the h5ad at ``path`` (as users run it; ``options``: novelty_threshold,
    backoff, species_map, majority_voting, ...), read back."""
    out = tmp / "annotated.h5ad"
    checks, run = split_options({"env_manager": "local", **options}, (CheckOptions, RunOptions))
    annotate(path, str(model_dir), output=out, key_added=KEY, overwrite=True, checks=checks, run=run)
    result = ad.read_h5ad(out)
    out.unlink()
    return result


def annotate_cellzoo(path: Path, model_dir: Path, tmp: Path, **options) -> Predictions:
    """:func:`annotated_by_cellzoo`, as a row of the tables."""
    return cellzoo_predictions(annotated_by_cellzoo(path, model_dir, tmp, **options))


def train_cellzoo(reference: Reference, work: Path, *, family: str) -> Annotator:
    """Build ``family`` from the reference's recipe (:func:`cellzoo_recipe`) with ``model_zoo.build``, and
    annotate with ``runner.annotate.annotate``."""
    model_dir = build_model(cellzoo_recipe(reference, family), reference.paths, work)

    def annotate_query(query: QueryData, tmp: Path) -> dict[str, Predictions]:
        options = {"species_map": True} if query.query.species != "human" else {}
        return {f"cellzoo {family}": annotate_cellzoo(query.path, model_dir, tmp, **options)}

    # the training time the build measured (a model reused from the cache took none here)
    annotate_query.train_seconds = yaml.safe_load((model_dir / "MLmodel").read_text())["metadata"]["training"][
        "training_seconds"
    ]
    return annotate_query


def celltypist_peer(reference: Reference, work: Path, *, majority_voting: bool) -> peers.CellTypist:
    """``celltypist.train`` (``CELLTYPIST`` settings, its default solver) on log1p CP10k of the reference's
    detected genes, in CellTypist's own environment."""
    detected = np.asarray(reference.cells.counts.sum(axis=0)).ravel() > 0  # CellTypist drops the others itself
    adata = log_cp10k(reference.cells.counts[:, detected], reference.cells.genes[detected])
    adata.obs["label"] = reference.cells.labels
    peer = peers.CellTypist(work / "celltypist", train=CELLTYPIST, majority_voting=majority_voting, p_thres=THRESHOLD)
    return peer.train(adata)


def celltypist_predictions(table: pd.DataFrame, column: str, confidence: str) -> Predictions:
    """A row of the tables from CellTypist's output: labels of ``column``, its probability ``confidence``,
    and its own abstention (``prob match`` mode with ``p_thres``)."""
    label = table[column].astype(str).to_numpy()
    uncertainty = 1.0 - table[confidence].to_numpy(dtype=float)
    abstained = peers.unassigned_by_p_thres(table["prob_match"].to_numpy())
    return Predictions(label, label, uncertainty, str(table["genes"].iloc[0]), abstained=abstained)


def train_celltypist(reference: Reference, work: Path, *, majority_voting: bool = True) -> Annotator:
    """CellTypist (:func:`celltypist_peer`); ``celltypist.annotate`` in ``best match`` mode on log1p CP10k of
    the query, with ``majority_voting`` (a second row; its ``predicted_labels`` are the run without voting)."""
    peer = celltypist_peer(reference, work, majority_voting=majority_voting)

    def annotate_query(query: QueryData, tmp: Path) -> dict[str, Predictions]:
        table = peer.annotate({query.query.name: log_cp10k(query.counts.X, query.counts.var_names)})[query.query.name]
        rows = {"CellTypist": celltypist_predictions(table, "predicted_labels", "conf_score")}
        if majority_voting:
            rows["CellTypist + majority voting"] = celltypist_predictions(table, "majority_voting", "conf_score_voting")
        return rows

    return annotate_query


def train_ingest(reference: Reference, work: Path) -> Annotator:
    """scanpy's ``ingest`` as its tutorial does it: the reference (log1p CP10k) restricted to the genes it
    shares with the query, HVGs, PCA and neighbours; each query's labels from the reference's kNN graph."""
    import scanpy as sc

    full = log_cp10k(reference.cells.counts, reference.cells.genes)
    full.obs["label"] = reference.cells.labels

    def annotate_query(query: QueryData, tmp: Path) -> dict[str, Predictions]:
        shared = full[:, query.counts.var_names].copy()  # the query's genes are reference genes by construction
        if shared.n_vars > INGEST["n_hvg"]:
            sc.pp.highly_variable_genes(shared, n_top_genes=INGEST["n_hvg"], subset=True)
        sc.pp.pca(shared, n_comps=INGEST["n_pcs"], random_state=SEED)
        sc.pp.neighbors(shared, n_neighbors=INGEST["n_neighbors"], random_state=SEED)
        target = log_cp10k(query.counts.X, query.counts.var_names)[:, shared.var_names].copy()
        sc.tl.ingest(target, shared, obs="label", embedding_method="pca")
        label = target.obs["label"].astype(str).to_numpy()
        return {"scanpy ingest": Predictions(label, label, None, f"{shared.n_vars}/{shared.n_vars}")}

    return annotate_query


def train_scarches(reference: Reference, work: Path) -> Annotator:
    """The scArches scANVI recipe: SCVI on the reference's HVGs (raw counts), SCANVI from it; each query by
    ``prepare_query_anndata`` (missing genes as zeros), ``load_query_data`` and training; ``predict(soft=True)``."""
    import scanpy as sc
    import scvi

    scvi.settings.seed = SEED
    cells = reference.cells
    batch = reference.batch if reference.batch is not None else np.full(len(cells.labels), "reference")
    obs = pd.DataFrame({"batch": batch, "label": cells.labels}, index=[f"ref{i}" for i in range(len(cells.labels))])
    adata = ad.AnnData(sp.csr_matrix(cells.counts, dtype=np.float32), obs=obs, var=pd.DataFrame(index=cells.genes))
    several = len(np.unique(batch)) > 1
    sc.pp.highly_variable_genes(
        adata,
        n_top_genes=SCARCHES_TRAIN["n_hvg"],
        flavor="seurat_v3",
        batch_key="batch" if several else None,
        subset=True,
    )
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch", labels_key="label")
    vae = scvi.model.SCVI(adata, **SCARCHES_MODEL)
    vae.train(max_epochs=SCARCHES_TRAIN["scvi_epochs"], enable_progress_bar=False)
    model = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown")
    model.train(
        max_epochs=SCARCHES_TRAIN["scanvi_epochs"],
        n_samples_per_label=SCARCHES_TRAIN["n_samples_per_label"],
        enable_progress_bar=False,
    )
    hvgs = adata.var_names
    reference_latent = model.get_latent_representation()
    model_dir = work / "scarches_reference"
    model.save(str(model_dir), overwrite=True)

    def annotate_query(query: QueryData, tmp: Path) -> dict[str, Predictions]:
        obs = pd.DataFrame({"batch": query.query.name, "label": "Unknown"}, index=query.counts.obs_names)
        target = ad.AnnData(query.counts.X.copy(), obs=obs, var=query.counts.var.copy())
        scvi.model.SCANVI.prepare_query_anndata(target, str(model_dir))
        mapped = scvi.model.SCANVI.load_query_data(target, str(model_dir))
        mapped.train(
            max_epochs=SCARCHES_TRAIN["query_epochs"],
            plan_kwargs={"weight_decay": 0.0},
            check_val_every_n_epoch=SCARCHES_TRAIN["check_val_every_n_epoch"],
            enable_progress_bar=False,
        )
        soft = mapped.predict(soft=True)
        top = soft.columns.to_numpy()[soft.to_numpy().argmax(axis=1)].astype(str)
        genes = f"{hvgs.isin(query.counts.var_names).sum()}/{len(hvgs)}"
        knn_label, knn_uncertainty = weighted_knn(reference_latent, cells.labels, mapped.get_latent_representation())
        return {
            "scArches scANVI": Predictions(top, top, 1.0 - soft.to_numpy().max(axis=1), genes),
            "scArches scANVI kNN": Predictions(knn_label, knn_label, knn_uncertainty, genes),
        }

    return annotate_query


def weighted_knn(reference: np.ndarray, labels: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scArches' weighted kNN label transfer (``scarches.utils.knn.weighted_knn_transfer``, as the HLCA maps
    queries): the ``KNN_NEIGHBORS`` nearest reference cells in the latent space, Gaussian weights scaled by
    each cell's distances; the label of the largest weight, uncertainty 1 - that weight."""
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=KNN_NEIGHBORS).fit(reference).kneighbors(query)
    scale = (2.0 / np.maximum(distances.std(axis=1, keepdims=True), 1e-12)) ** 2
    weights = np.exp(-distances / scale)
    weights /= weights.sum(axis=1, keepdims=True)
    classes, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    votes = np.zeros((len(query), len(classes)))
    np.add.at(votes, (np.repeat(np.arange(len(query)), KNN_NEIGHBORS), codes[indices].ravel()), weights.ravel())
    return classes[votes.argmax(axis=1)], 1.0 - votes.max(axis=1)


@dataclass(frozen=True)
class Method:
    key: str
    rows: tuple[str, ...]  # the table rows it produces
    train: Callable[[Reference, Path], Annotator]
    cellzoo: bool


METHODS = (
    *(Method(f, (f"cellzoo {f}",), partial(train_cellzoo, family=f), True) for f in ("linear", "xgboost", "scanvi")),
    Method("celltypist", ("CellTypist", "CellTypist + majority voting"), train_celltypist, False),
    Method("ingest", ("scanpy ingest",), train_ingest, False),
    Method("scarches", ("scArches scANVI", "scArches scANVI kNN"), train_scarches, False),
)


# ---- scoring ----


def answer_terms(predictions: Predictions, terms: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """The ontology ids of the reported labels and of the most probable labels ('' for 'Unassigned')."""
    term, top = predictions.terms, predictions.top_terms
    term = term if term is not None else np.array([terms.get(x, "") for x in predictions.label])
    return term, top if top is not None else np.array([terms.get(x, "") for x in predictions.top_label])


def correctness(term: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Right at the ontology level, cell by cell (``model_zoo.metrics.ontology_match``; '' is wrong)."""
    return np.array([ontology_match(str(p), str(t)) for p, t in zip(term, truth, strict=True)], dtype=bool)


def answer_depth(term: np.ndarray) -> float | None:
    """Mean depth of the answers given (their number of Cell Ontology ancestors, itself included)."""
    given = [t for t in term if t]
    return float(np.mean([len(term_lineage(str(t))) for t in given])) if given else None


def score(predictions: Predictions, truth: np.ndarray, terms: dict[str, str], *, exact_always: bool = False) -> dict:
    """Accuracy (Unassigned = wrong), on assigned cells, exact, macro-F1, ECE, the Unassigned rate, and how
    specific the answers are (share answered with the finest class, mean depth), recall per truth term.

    Exact accuracy (the most probable label's ontology id equals the truth's) is given only when every truth
    term is one of the reference's terms, or with ``exact_always``; otherwise (None) the label sets are not
    comparable.
    """
    term, top_term = answer_terms(predictions, terms)
    correct = correctness(term, truth)
    assigned = predictions.label != UNASSIGNED
    comparable = exact_always or set(truth) <= set(terms.values())
    labels, counts = np.unique(predictions.label, return_counts=True)
    finest = predictions.kind == "finest" if predictions.kind is not None else assigned
    scores = {
        "genes": predictions.genes,
        "commonest": (str(labels[counts.argmax()]), float(counts.max() / counts.sum())),
        "accuracy": float(correct.mean()),
        "accuracy_assigned": float(correct[assigned].mean()) if assigned.any() else None,
        "exact": float(np.mean(top_term == truth)) if comparable else None,
        "macro_f1": ontology_macro_f1(term, truth),
        "ece": None,
        "unassigned": float(1 - assigned.mean()),
        "finest": float(np.mean(finest)),
        "depth": answer_depth(term),
        "recall": {str(t): float(correct[truth == t].mean()) for t in np.unique(truth)},
    }
    if predictions.uncertainty is not None:
        top_correct = correctness(top_term, truth)
        scores["ece"] = expected_calibration_error(1.0 - predictions.uncertainty, top_correct, N_BINS)
        scores["reliability"] = (1.0 - predictions.uncertainty, top_correct)
    return scores


def flagged(predictions: Predictions) -> np.ndarray:
    """Cells a user is told not to trust: 'Unassigned', or uncertainty above the threshold."""
    return (predictions.label == UNASSIGNED) | (predictions.uncertainty > THRESHOLD)


def score_ood(predictions: Predictions, truth: np.ndarray, held_out_term: str) -> dict:
    """For the cells of the class left out of training: the share flagged, the share of the other cells
    flagged, and the AUROC of the uncertainty separating them (None when the method reports none)."""
    from sklearn.metrics import roc_auc_score

    held = np.array([ontology_match(held_out_term, t) for t in truth])
    scores = {"n_held_out": int(held.sum()), "flagged_held_out": None, "flagged_others": None, "auroc": None}
    if predictions.uncertainty is None:
        return scores
    flags = flagged(predictions)
    return scores | {
        "flagged_held_out": float(flags[held].mean()),
        "flagged_others": float(flags[~held].mean()),
        "auroc": float(roc_auc_score(held, predictions.uncertainty)),
    }


@dataclass
class Results:
    scores: list[dict]  # one per (query, method row): task, query, method, cellzoo, the scores, seconds
    ood: list[dict]  # one per (query, method row) of the held-out runs
    skipped: list[str]  # methods not run, and why


@dataclass(frozen=True)
class Outcome:
    """One method's predictions on one query: a row of the tables."""

    query: QueryData
    method: str  # the row
    cellzoo: bool
    predictions: Predictions
    train_s: float
    annotate_s: float


def apply_method(
    method: Method, reference: Reference, queries: list[QueryData], folder: Path, skipped: list[str]
) -> list[Outcome]:
    """Train ``method`` on ``reference`` in ``folder`` and annotate each query; a query that `annotate`
    refuses (what a user would get) is noted in ``skipped``."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    annotator = method.train(reference, folder)
    train_seconds = getattr(annotator, "train_seconds", time.perf_counter() - start)
    trained_on = f"without {reference.held_out}" if reference.held_out else "all classes"
    logger.info("%s, %s (%s): trained in %.0f s", reference.task.name, method.key, trained_on, train_seconds)
    outcomes = []
    for query in queries:
        start = time.perf_counter()
        try:
            predictions = annotator(query, folder)
        except CellzooError as err:
            skipped.append(f"{method.key} ({trained_on}) on {query.query.name}: {str(err).rstrip('.')}")
            continue
        seconds = time.perf_counter() - start
        outcomes += [
            Outcome(query, row, method.cellzoo, prediction, train_seconds, seconds)
            for row, prediction in predictions.items()
        ]
    return outcomes


def run(tasks: list[Task], methods: tuple[Method, ...], data: Path, work: Path) -> Results:
    """Train every method on each task's reference, and again without its held-out class; annotate and score."""
    results = Results([], [], [])
    for task in tasks:
        queries = None
        for held_out in (None, task.held_out):
            reference = load_reference(task, data, held_out)
            queries = queries or [load_query(q, data, reference) for q in task.queries]
            for method in methods:
                folder = work / f"{task.references[0].split('/')[0]}-{method.key}-{held_out or 'all'}"
                for out in apply_method(method, reference, queries, folder, results.skipped):
                    record = {"query": out.query.query.name, "method": out.method, "cellzoo": out.cellzoo}
                    if held_out is None:
                        scores = score(out.predictions, out.query.truth, reference.terms)
                        results.scores.append(record | scores | {"train_s": out.train_s, "annotate_s": out.annotate_s})
                    else:
                        ood = score_ood(out.predictions, out.query.truth, reference.terms[held_out])
                        results.ood.append(record | {"held_out": held_out} | ood)
    order = [q.name for task in tasks for q in task.queries]
    for rows in (results.scores, results.ood):
        rows.sort(key=lambda r: order.index(r["query"]))  # stable: methods stay in their order per query
    return results


# ---- the report ----


def fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def accuracy_table(results: Results) -> str:
    header = ["query", "method", "ontology acc.", "acc. on assigned", "exact acc.", "macro-F1", "ECE", "Unassigned"]
    header += ["genes in query", "train s", "annotate s"]
    rows = [
        [
            r["query"],
            r["method"],
            *(fmt(r[k]) for k in ("accuracy", "accuracy_assigned", "exact", "macro_f1", "ece", "unassigned")),
            r["genes"],
            f"{r['train_s']:.0f}",
            f"{r['annotate_s']:.0f}",
        ]
        for r in results.scores
    ]
    return markdown_table(header, rows)


def ood_table(results: Results) -> str:
    header = ["query", "held out", "held-out cells", "method", "held-out flagged", "others flagged", "AUROC"]
    rows = [
        [
            r["query"],
            r["held_out"],
            str(r["n_held_out"]),
            r["method"],
            *(fmt(r[k]) for k in ("flagged_held_out", "flagged_others", "auroc")),
        ]
        for r in results.ood
    ]
    return markdown_table(header, rows)


def goals(results: Results) -> tuple[str, list[str]]:
    """Per query: the best method, cellzoo's best family against the best peer (accuracy) and against
    every peer that reports a confidence (ECE). Returns the table and one sentence per query."""
    rows, sentences = [], []
    for query in dict.fromkeys(r["query"] for r in results.scores):
        mine = [r for r in results.scores if r["query"] == query]
        zoo = max((r for r in mine if r["cellzoo"]), key=lambda r: r["accuracy"], default=None)
        peers = [r for r in mine if not r["cellzoo"]]
        if zoo is None or not peers:
            continue
        best = max(mine, key=lambda r: r["accuracy"])
        best_peer = max(peers, key=lambda r: r["accuracy"])
        calibrated = min((r for r in peers if r["ece"] is not None), key=lambda r: r["ece"], default=None)
        accurate = zoo["accuracy"] >= best_peer["accuracy"]
        better_calibrated = None if calibrated is None else zoo["ece"] is not None and zoo["ece"] < calibrated["ece"]
        rows.append(
            [
                query,
                f"{best['method']} ({fmt(best['accuracy'])})",
                f"{zoo['method']} ({fmt(zoo['accuracy'])})",
                f"{best_peer['method']} ({fmt(best_peer['accuracy'])})",
                "met" if accurate else "**not met**",
                fmt(zoo["ece"]),
                f"{calibrated['method']} ({fmt(calibrated['ece'])})" if calibrated else "n/a",
                {None: "n/a", True: "met", False: "**not met**"}[better_calibrated],
            ]
        )
        sentences.append(
            f"- {query}: the most accurate method is {best['method']} ({fmt(best['accuracy'])}). "
            f"cellzoo's best family, {zoo['method']} ({fmt(zoo['accuracy'])}), is "
            f"{'at or above' if accurate else 'below'} the best peer, "
            f"{best_peer['method']} ({fmt(best_peer['accuracy'])}); its ECE {fmt(zoo['ece'])} is "
            + (
                f"{'below' if better_calibrated else 'not below'} the best-calibrated peer's, "
                f"{calibrated['method']} ({fmt(calibrated['ece'])})."
                if calibrated
                else "not compared (no peer reports a confidence)."
            )
        )
    header = ["query", "best method", "best cellzoo family", "best peer", "accuracy goal"]
    header += ["its ECE", "best-calibrated peer (ECE)", "calibration goal"]
    return markdown_table(header, rows), sentences


def plot(results: Results, out: Path) -> list[str]:
    """Bar chart of accuracy, reliability diagrams, and OOD AUROC / flagged share; the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(results.scores)
    queries = list(dict.fromkeys(frame["query"]))
    methods = list(dict.fromkeys(frame["method"]))
    names = ["accuracy_by_method.png", "accuracy_reliability.png", "accuracy_ood.png"]

    fig, ax = plt.subplots(figsize=(11, 4.5))
    grouped = frame.pivot(index="query", columns="method", values="accuracy").loc[queries, methods]
    grouped.plot.bar(ax=ax, rot=0, width=0.85)
    ax.set_ylabel("ontology-level accuracy (Unassigned = wrong)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    fig.savefig(out / names[0], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(queries), figsize=(4 * len(queries), 4), squeeze=False)
    edges = np.linspace(0, 1, N_BINS + 1)
    for ax, query in zip(axes[0], queries, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        for r in results.scores:
            if r["query"] == query and "reliability" in r:
                confidence, correct = r["reliability"]
                bins = np.clip(np.digitize(confidence, edges) - 1, 0, N_BINS - 1)
                used = [b for b in range(N_BINS) if (bins == b).any()]
                x = [confidence[bins == b].mean() for b in used]
                y = [correct[bins == b].mean() for b in used]
                ax.plot(x, y, marker="o", ms=3, label=f"{r['method']} (ECE {r['ece']:.3f})")
        ax.set(title=query, xlabel="reported confidence", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("share right (ontology level)")
    fig.tight_layout()
    fig.savefig(out / names[1], dpi=110)
    plt.close(fig)

    ood = pd.DataFrame(results.ood).dropna(subset=["auroc"])
    ood_queries = list(dict.fromkeys(ood["query"]))
    ood_methods = list(dict.fromkeys(ood["method"]))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, column, label in zip(
        axes,
        ("auroc", "flagged_held_out"),
        ("AUROC of the uncertainty, held-out class vs rest", f"held-out cells flagged (uncertainty > {THRESHOLD})"),
        strict=True,
    ):
        table = ood.pivot(index="query", columns="method", values=column).loc[ood_queries, ood_methods]
        table.plot.bar(ax=ax, rot=15, width=0.85, legend=False)
        ax.set(ylabel=label, ylim=(0, 1.05), xlabel="")
        ax.tick_params(axis="x", labelsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=len(labels), loc="lower center")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out / names[2], dpi=110)
    plt.close(fig)
    return names


def environment() -> dict[str, str]:
    packages = ["cellzoo", "scanpy", "scvi-tools", "xgboost", "torch", "scikit-learn", "anndata"]
    versions = {name: package_version(name) for name in [*packages, "mlflow"]}
    try:
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        changed = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, check=True)
        commit = commit.stdout.strip() + (" with uncommitted changes" if changed.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "machine": f"{platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPU cores, "
        f"{ram:.0f} GiB RAM, no GPU used",
        "commit": commit,
    }


def report(
    results: Results, plots: list[str], command: str, seconds: float, load: tuple[float, float], env: dict[str, str]
) -> str:
    goal_table, sentences = goals(results)
    skipped = "".join(f"\n- Not run: {s}." for s in results.skipped)
    collapsed = "\n".join(
        f"- {r['method']} gives {r['commonest'][1]:.0%} of the {r['query']} cells one label, `{r['commonest'][0]}`."
        for r in results.scores
        if r["commonest"][1] >= COLLAPSED
    )
    return f"""## Accuracy against the peers

Generated by `{command}` on {dt.date.today().isoformat()} in {seconds / 60:.1f} min (git {env["commit"]}).
Machine: {env["machine"]}; load average {load[0]:.1f} at the start and {load[1]:.1f} at the end
(the machine was shared with other jobs, so times are indicative).
Versions: {env["versions"]}.

Every method is trained on the same reference cells: PBMC, the SoupX PBMC 4k cells (`Annotation`,
`?` dropped); lung cell lines, CellBench CEL-seq2 5-line plates 1 and 2 (`cell_line`, on the genes
both plates have). Queries: Kang 2018 and OneK1K (Ensembl ids mapped to symbols with the runner's
GENCODE table, as `annotate` does), CellBench Drop-seq and CEL-seq2 3-line mixtures.

### Methods and settings
- **cellzoo linear / xgboost / scanvi**: built by `model_zoo.build` (the code of `cellzoo build`) from
  the zoo recipes `pbmc` (linear, xgboost), `pbmc-scanvi`, and `lung-cell-lines` (all three families),
  with each recipe's parameters and the family set in a copy of the recipe; annotated by
  `runner.annotate.annotate` (`annotate`, in-process, `--unassigned-threshold {THRESHOLD}`). Confidence:
  1 - the reported uncertainty.
- **CellTypist** {peers.celltypist_version()}: `celltypist.train` on log1p CP10k of the reference's
  detected genes with `feature_selection=True, top_genes=300` (as the linear family), `random_state=0`,
  otherwise its defaults: the lbfgs `LogisticRegression` CellTypist's users get (scaled input, `C=1.0`).
  celltypist 1.7.1's default solver fails with scikit-learn >= 1.8 (cellzoo's environment has
  {package_version("scikit-learn")}), so it runs in its own virtualenv (`benchmarks/peers.py`: celltypist
  1.7.1 + scikit-learn 1.7.2, created once), fed h5ad files and read back as CSV. `celltypist.annotate` on
  log1p CP10k of the query in `best match` mode, one call with `majority_voting=True` (its own over-clustering): the
  `predicted_labels` column is the run without voting, `majority_voting` the run with it. Confidence:
  CellTypist's `conf_score` (`to_adata(insert_conf_by=...)`: the probability of the predicted label, or
  with voting of the voted label).
- **scanpy ingest**: reference log1p CP10k on the genes it shares with the query, {INGEST["n_hvg"]} HVGs
  (scanpy's default flavour) when there are more, PCA ({INGEST["n_pcs"]} PCs), neighbours
  (k={INGEST["n_neighbors"]}); `sc.tl.ingest(query, reference, obs="label", embedding_method="pca")`.
  It reports no confidence: ECE and out-of-distribution scores are n/a.
- **scArches scANVI** (the scArches / scvi-tools tutorial recipe, CPU, `scvi.settings.seed = 0`): SCVI
  on the reference's {SCARCHES_TRAIN["n_hvg"]} seurat_v3 HVGs of raw counts (per plate for the lung reference) with
  `{", ".join(f"{k}={v!r}" for k, v in SCARCHES_MODEL.items())}`, `max_epochs={SCARCHES_TRAIN["scvi_epochs"]}`
  (**capped**: the tutorial keeps scvi-tools' default, 400 at these sizes, 3-5 min per reference here;
  100 is the budget of cellzoo's scanvi family); `SCANVI.from_scvi_model(unlabeled_category="Unknown")`,
  `train(max_epochs={SCARCHES_TRAIN["scanvi_epochs"]}, n_samples_per_label={SCARCHES_TRAIN["n_samples_per_label"]})`;
  each query: `prepare_query_anndata` (missing genes as zeros), `load_query_data`,
  `train(max_epochs={SCARCHES_TRAIN["query_epochs"]}, plan_kwargs=dict(weight_decay=0.0),
  check_val_every_n_epoch={SCARCHES_TRAIN["check_val_every_n_epoch"]})` (the full 100 epochs, not capped), and
  `predict(soft=True)`: the label of the highest probability, confidence that probability. **scArches scANVI
  kNN**: the same mapped latent space, labels and uncertainty by scArches' weighted kNN transfer (k={KNN_NEIGHBORS},
  as the HLCA maps queries).

### Scoring rules
- **Ontology accuracy**: a prediction is right when its ontology id (Cell Ontology; Cellosaurus for the
  cell lines, which must match exactly) is the truth's term or an ancestor or descendant of it
  (`model_zoo.metrics.ontology_match`; e.g. `MNP` is right for CD14+ monocytes, `B` for memory B cells).
  **`Unassigned` counts as wrong**; "acc. on assigned" leaves those cells out.
- **Exact accuracy**: the predicted label's ontology id equals the truth's. It is given only where every
  query label's id is one of the reference labels' ids (the lung cell lines); for PBMC the label sets
  differ (`MNP` vs classical / non-classical monocytes, `B` vs memory B), so it is n/a.
- **Macro-F1** over the truth's ontology terms: a prediction right at the ontology level counts as the
  truth's term, a wrong one (or `Unassigned`) as its own.
- **Genes in query**: the genes a method's model uses that the query has. cellzoo: the runner's
  overlap after id mapping (`annotate` refuses a query below 20%, which then has no row: see below);
  CellTypist: its selected features (the others are read as zero); scArches: the reference HVGs (the
  others padded with zeros by `prepare_query_anndata`); ingest: the shared genes it is fitted on.
- **ECE** ({N_BINS} equal-width bins) of the reported confidence against ontology-level correctness of
  the label that confidence is about (cellzoo: the most probable class, before the threshold).
- **Out of distribution**: each reference is trained again without one class (PBMC `{PBMC.held_out}`,
  lung `{LUNG.held_out}`); the query cells of that class (by ontology: Kang's `B cells`, OneK1K's `bmem`,
  `H2228`) are scored. "Flagged": `Unassigned` or uncertainty (1 - confidence) above {THRESHOLD} (the
  runner's threshold; CellTypist's `p_thres`, equal to its `prob match` mode leaving the cell
  `Unassigned`). AUROC: `sklearn.metrics.roc_auc_score` of the uncertainty, held-out cells vs the rest.
- **Goal** (issue 6): cellzoo's best family (by ontology accuracy) at or above the best peer on each
  query, and its ECE below that of every peer reporting a confidence. Computed from the table below.{skipped}

### Cross-study and cross-technology accuracy
{accuracy_table(results)}

{collapsed}

### The goal, per query
{goal_table}

{chr(10).join(sentences)}

### Out of distribution: cells of a class the reference never had
{ood_table(results)}

### Plots
{chr(10).join(f"![{name}]({name})" for name in plots)}

### Reproduce
    {command}
"""


def quiet_logs() -> None:
    """The benchmarks' progress lines, without the libraries' warnings."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("benchmarks.accuracy", "benchmarks.peers", "benchmarks.lung", "benchmarks.novelty"):
        logging.getLogger(name).setLevel(logging.INFO)
    for noisy in ("scvi", "lightning", "lightning.pytorch", "model_zoo", "runner"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def bench_command(script: str, argv: list[str] | None) -> str:
    """The command that ran a benchmark part, as its report prints it."""
    return " ".join([f"python benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])])


def part_arguments(
    script: str, description: str, written: str, quick: str, argv: list[str] | None
) -> tuple[argparse.Namespace, str]:
    """The command line of a benchmark part on the shared data: ``--data``, ``--docs-dir`` (the folder for
    ``written``), ``--quick`` (``quick``: what it runs then); the libraries' logs quieted. The arguments, and the
    command (:func:`bench_command`)."""
    parser = argparse.ArgumentParser(prog=f"benchmarks/{script}", description=description)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--docs-dir", type=Path, default=DEFAULT_OUT, help=f"folder for {written}")
    parser.add_argument("--quick", action="store_true", help=quick)
    args = parser.parse_args(argv)
    quiet_logs()
    return args, bench_command(script, argv)


def main(argv: list[str] | None = None) -> str:
    doc = __doc__.splitlines()[0]
    args, command = part_arguments("accuracy.py", doc, "accuracy.md and the plots", "the lung cell lines only", argv)
    start, load_start, env = time.perf_counter(), os.getloadavg()[0], environment()  # before anything is written
    with tempfile.TemporaryDirectory(prefix="cellzoo-accuracy-") as tmp:
        results = run([LUNG] if args.quick else [PBMC, LUNG], METHODS, args.data, Path(tmp))
    args.docs_dir.mkdir(parents=True, exist_ok=True)
    plots = plot(results, args.docs_dir)
    text = report(results, plots, command, time.perf_counter() - start, (load_start, os.getloadavg()[0]), env)
    (args.docs_dir / "accuracy.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
