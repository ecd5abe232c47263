"""Where results go in the AnnData (DESIGN.md), and the columns of the model contract the runner reads.

Key ``K`` defaults to the model's name; ``--key-added K`` overrides it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runner.errors import UsageError

UNASSIGNED = "Unassigned"

# columns of a model's predict() output (the model contract in DESIGN.md)
LABEL = "label"
UNCERTAINTY = "uncertainty"
ONTOLOGY_TERM_ID = "ontology_term_id"
PROB_PREFIX = "prob:"
EMB_PREFIX = "emb:"
UMAP_PREFIX = "umap:"
NOVELTY = "novelty"
ANSWER = "answer"  # the most specific label the model stands behind (after back-off), or Unassigned
ANSWER_ONTOLOGY_TERM_ID = "answer_ontology_term_id"
ANSWER_KIND = "answer_kind"  # finest | coarser | uncertain | novel (+ no_signal, set by the runner)
LEVEL_PREFIX = "level:"  # level:<level> and level:<level>:ontology_term_id
NO_SIGNAL = "no_signal"
# params entries of a predict call
GENES_PRESENT = "genes_present"  # the model genes the query has
CELL_TOTALS = "cell_totals"  # each cell's total count over the query's genes but the technical ones (novelty)
CELL_TOTALS_EXCLUDE = "cell_totals_exclude"  # model metadata: the regex of the genes those totals leave out
UNASSIGNED_THRESHOLD = "unassigned_threshold"
NOVELTY_THRESHOLD = "novelty_threshold"
BACKOFF = "backoff"
LEVELS = ("compartment", "lineage")  # the levels of model_zoo/data/ontology_levels.csv
RESULT_KEY = re.compile(r"^(?!\.$)[^/\x00]+$")  # a key K names h5ad groups: no "/", not empty, not "." (HDF5: "here")
# keys whose K_ontology_term_id is a column the CELLxGENE schema defines (where '' for Unassigned is invalid)
SCHEMA_KEYS = (
    "assay",
    "cell_type",
    "development_stage",
    "disease",
    "ethnicity",
    "experimental_condition",
    "organism",
    "self_reported_ethnicity",
    "sex",
    "tissue",
)


@dataclass(frozen=True)
class ResultKeys:
    """The AnnData fields written for key ``K``."""

    key: str

    def __post_init__(self) -> None:
        if not isinstance(self.key, str):
            raise UsageError(f"--key-added {self.key!r}: a key is a string, got {type(self.key).__name__}")
        if not RESULT_KEY.match(self.key):
            raise UsageError(
                f"--key-added {self.key!r}: a key is not empty, not '.' and holds no '/' (h5ad paths use them)"
            )
        if self.key in SCHEMA_KEYS:
            raise UsageError(
                f"--key-added {self.key!r} would write {self.key}_ontology_term_id, a column the CELLxGENE schema "
                f"defines otherwise; choose another key, e.g. {self.key}_cellzoo"
            )

    @property
    def predicted(self) -> str:  # obs: the answer (after back-off), 'Unassigned' if uncertain or novel
        return f"{self.key}_predicted"

    @property
    def uncertainty(self) -> str:  # obs: float in [0, 1], 1 - the probability of the finest guess
        return f"{self.key}_uncertainty"

    @property
    def ontology_term_id(self) -> str:  # obs: Cell Ontology id of the answer ('' if none)
        return f"{self.key}_ontology_term_id"

    @property
    def novelty(self) -> str:  # obs: float >= 0, above the novelty threshold (1.0) = unlike the reference
        return f"{self.key}_novelty"

    @property
    def finest(self) -> str:  # obs: the most probable class, whatever its probability
        return f"{self.key}_finest"

    @property
    def finest_ontology_term_id(self) -> str:  # obs: its Cell Ontology id
        return f"{self.key}_finest_ontology_term_id"

    @property
    def answer_kind(self) -> str:  # obs: why the answer is what it is (finest, coarser, uncertain, novel, ...)
        return f"{self.key}_answer_kind"

    @property
    def majority_voting(self) -> str:  # obs: the most frequent answer of the cell's over-cluster (--majority-voting)
        return f"{self.key}_majority_voting"

    @property
    def majority_voting_ontology_term_id(self) -> str:  # obs: its Cell Ontology id
        return f"{self.key}_majority_voting_ontology_term_id"

    @property
    def over_clustering(self) -> str:  # obs: the over-cluster the vote was taken in
        return f"{self.key}_over_clustering"

    def level(self, name: str) -> str:  # obs: the label at a coarser level (compartment, lineage)
        return f"{self.key}_{name}"

    def level_ontology_term_id(self, name: str) -> str:  # obs: its Cell Ontology id
        return f"{self.key}_{name}_ontology_term_id"

    @property
    def probabilities(self) -> str:  # obsm: (cells x classes) float32 array; class names in uns[K]['classes']
        return f"{self.key}_probabilities"

    @property
    def embedding(self) -> str:  # obsm: the model's embedding
        return f"X_{self.key}"

    @property
    def umap(self) -> str:  # obsm: query projected onto the reference UMAP
        return f"X_{self.key}_umap"

    @property
    def provenance(self) -> str:  # uns: how the run was made
        return self.key

    def of_output(self, columns) -> dict[str, str]:
        """The model's per-cell output columns (the contract's) that name an ``obs`` field, and that field:
        ``answer`` -> ``K_predicted``, ``label`` -> ``K_finest``, ``level:<name>`` -> ``K_<name>``, ..."""
        fields = {
            ANSWER: self.predicted,
            ANSWER_ONTOLOGY_TERM_ID: self.ontology_term_id,
            UNCERTAINTY: self.uncertainty,
            NOVELTY: self.novelty,
            LABEL: self.finest,
            ONTOLOGY_TERM_ID: self.finest_ontology_term_id,
            ANSWER_KIND: self.answer_kind,
        }
        for column in columns:
            if column.startswith(LEVEL_PREFIX):
                name, _, term = column.removeprefix(LEVEL_PREFIX).partition(":")
                fields[column] = self.level_ontology_term_id(name) if term else self.level(name)
        return {column: fields[column] for column in columns if column in fields}

    def obs_keys(self) -> list[str]:
        levels = [key for name in LEVELS for key in (self.level(name), self.level_ontology_term_id(name))]
        return [
            self.predicted,
            self.uncertainty,
            self.ontology_term_id,
            self.novelty,
            self.finest,
            self.finest_ontology_term_id,
            self.answer_kind,
            *levels,
            *self.voting_keys(),
        ]

    def voting_keys(self) -> list[str]:  # obs: written with --majority-voting only
        return [self.majority_voting, self.majority_voting_ontology_term_id, self.over_clustering]

    def obsm_keys(self) -> list[str]:
        return [self.probabilities, self.embedding, self.umap]
