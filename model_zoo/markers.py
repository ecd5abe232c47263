"""Marker genes of each class of a reference, computed at build time and stored in the model (``markers.json``).

A class's markers are the model genes with the largest Welch t-statistic of log1p(CP10k) expression (each
cell normalised by its total over all its genes) in the class's cells against all other cells, among the
genes more expressed in the class (scanpy's ``rank_genes_groups(method="t-test")``, over the model's genes
only, so that a query aligned to the model has them). The report draws them as a dotplot.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

N_MARKERS = 5  # per class
METHOD = (
    "Welch t-test of log1p(CP10k) expression, the class's reference cells against all others, over the model's "
    "genes; the top {n} genes more expressed in the class"
)


def marker_genes(
    counts: sp.csr_matrix, totals: np.ndarray, genes: np.ndarray, labels: np.ndarray, n_markers: int = N_MARKERS
) -> dict:
    """Markers of each class of ``labels`` from reference ``counts`` (cells x ``genes``; ``totals``: each cell's
    total over all its genes).

    Returns
    -------
    dict
        ``method``; ``markers``: class -> list of ``{gene, t, mean_in, mean_out, fraction_in, fraction_out}``,
        best first (means of log1p(CP10k), fractions of cells with a count).
    """
    scale = 1e4 / np.maximum(np.asarray(totals, dtype=np.float64), 1.0)
    expr = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    expr.data *= np.repeat(scale, np.diff(expr.indptr))
    np.log1p(expr.data, out=expr.data)
    labels = np.asarray(labels).astype(str)
    classes, index = np.unique(labels, return_inverse=True)
    onehot = sp.csr_matrix((np.ones(len(labels)), (index, np.arange(len(labels)))), shape=(len(classes), len(labels)))
    size = np.asarray(onehot.sum(axis=1))
    total_sum, total_square = np.asarray(expr.sum(axis=0)), np.asarray(expr.multiply(expr).sum(axis=0))
    total_detected = np.asarray((expr > 0).sum(axis=0))
    sums, squares = onehot @ expr, onehot @ expr.multiply(expr)
    detected = onehot @ (expr > 0).astype(np.float64)
    sums, squares, detected = (np.asarray(m.todense()) for m in (sums, squares, detected))
    rest = np.maximum(len(labels) - size, 1)
    mean_in, mean_out = sums / size, (total_sum - sums) / rest
    var_in = np.maximum(squares / size - mean_in**2, 0) * size / np.maximum(size - 1, 1)
    var_out = np.maximum((total_square - squares) / rest - mean_out**2, 0) * rest / np.maximum(rest - 1, 1)
    t = (mean_in - mean_out) / np.sqrt(var_in / size + var_out / rest + 1e-12)
    t[mean_in <= mean_out] = -np.inf
    fraction_in, fraction_out = detected / size, (total_detected - detected) / rest
    markers = {}
    for k, name in enumerate(classes):
        best = [g for g in np.argsort(-t[k])[:n_markers] if np.isfinite(t[k, g])]
        markers[str(name)] = [
            {
                "gene": str(genes[g]),
                "t": round(float(t[k, g]), 3),
                "mean_in": round(float(mean_in[k, g]), 4),
                "mean_out": round(float(mean_out[k, g]), 4),
                "fraction_in": round(float(fraction_in[k, g]), 4),
                "fraction_out": round(float(fraction_out[k, g]), 4),
            }
            for g in best
        ]
    return {"method": METHOD.format(n=n_markers), "markers": markers}
