"""What every family's pyfunc shares: its labels and hierarchy, loaded once, and the contract's output."""

from __future__ import annotations

import mlflow
import numpy as np

from model_zoo import contract, novelty
from model_zoo.pyfunc_io import load_hierarchy, load_ontology_ids


class ZooAnnotator(mlflow.pyfunc.PythonModel):
    """A family's pyfunc: ``load_context`` sets ``self.weights`` and calls :meth:`load_labels`; ``predict``
    computes probabilities, embedding, map and the neighbours' distances and returns :meth:`answer`."""

    # the contract's input is a CSR matrix or a DataFrame: no type-hint-based validation by MLflow
    _skip_type_hint_validation = True

    def load_labels(self, context) -> None:
        """The label table's ontology ids, the levels and back-off terms, and the technical genes (novelty)."""
        self.ontology_ids = load_ontology_ids(context)
        self.hierarchy = load_hierarchy(context)
        self.technical = novelty.technical(self.weights.genes)

    def answer(
        self,
        params: dict | None,
        counts,
        present: np.ndarray,
        totals: np.ndarray | None,
        probabilities: np.ndarray,
        latent: np.ndarray,
        umap: np.ndarray,
        distances: np.ndarray,
        indices: np.ndarray,
    ):
        """The contract's output frame, with the novelty score (:func:`model_zoo.novelty.combined`) from the
        ``distances`` to the nearest reference cells and their ``indices``; its parts stay in ``self.novelty_parts``
        until the next call (not in the contract's output; the build reads them to calibrate the distance)."""
        parts = novelty.query_parts(
            distances, indices, counts, totals, probabilities, present, self.technical, self.weights
        )
        self.novelty_parts = parts
        return contract.output_frame(
            self.weights.classes,
            probabilities,
            self.ontology_ids,
            latent,
            umap,
            novelty_score=novelty.combined(parts, len(probabilities)),
            hierarchy=self.hierarchy,
            params=params,
        )
