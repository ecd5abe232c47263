"""Where results go in the AnnData (DESIGN.md), and the columns of the model contract the runner reads.

Key ``K`` defaults to the model's name; ``--key-added K`` overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass

UNASSIGNED = "Unassigned"

# columns of a model's predict() output (the model contract in DESIGN.md)
LABEL = "label"
UNCERTAINTY = "uncertainty"
ONTOLOGY_TERM_ID = "ontology_term_id"
PROB_PREFIX = "prob:"
EMB_PREFIX = "emb:"
UMAP_PREFIX = "umap:"
GENES_PRESENT = "genes_present"  # params entry: the model genes the query has


@dataclass(frozen=True)
class ResultKeys:
    """The AnnData fields written for key ``K``."""

    key: str

    @property
    def predicted(self) -> str:  # obs: categorical label, 'Unassigned' above the threshold
        return f"{self.key}_predicted"

    @property
    def uncertainty(self) -> str:  # obs: float in [0, 1], 0 = certain
        return f"{self.key}_uncertainty"

    @property
    def ontology_term_id(self) -> str:  # obs: Cell Ontology id of the predicted label ('' if none)
        return f"{self.key}_ontology_term_id"

    @property
    def probabilities(self) -> str:  # obsm: DataFrame, one column per class
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

    def obs_keys(self) -> list[str]:
        return [self.predicted, self.uncertainty, self.ontology_term_id]

    def obsm_keys(self) -> list[str]:
        return [self.probabilities, self.embedding, self.umap]
