"""Build the bundled example query ``examples/celltypist_sample.h5ad`` (559 real immune cells).

Source: the unlabelled sample table that ships inside the celltypist wheel on PyPI
(``celltypist/data/samples/sample_cell_by_gene.csv``; celltypist 1.7.1; MIT, Teichmann Lab; see
``LICENSE-celltypist.txt``): 559 cells x 32,786 genes (symbols), raw counts, cells x genes,
kept whole as integer counts in a sparse, gzipped h5ad (all-zero genes too: they were measured).

    python examples/make_example.py [PATH/TO/sample_cell_by_gene.csv[.gz]]

Without a path it reads the table from an installed celltypist (``pip install celltypist``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

OUT = Path(__file__).parent / "celltypist_sample.h5ad"


def main(argv: list[str]) -> None:
    if argv:
        source = Path(argv[0])
    else:
        import celltypist

        source = Path(celltypist.__file__).parent / "data" / "samples" / "sample_cell_by_gene.csv"
    table = pd.read_csv(source, index_col=0)
    # the table stores counts as floats (some as 0.999999999...): round, never truncate
    adata = ad.AnnData(X=sp.csr_matrix(np.rint(table.to_numpy()).astype("int32")))
    adata.obs_names = table.index.astype(str)
    adata.var_names = table.columns.astype(str)
    adata.uns["source"] = (
        "celltypist 1.7.1 wheel (PyPI), celltypist/data/samples/sample_cell_by_gene.csv; "
        "MIT licence, Copyright (c) 2020 Teichmann Lab; unlabelled immune cells, raw counts"
    )
    adata.write_h5ad(OUT, compression="gzip", compression_opts=9)
    print(f"{OUT}: {adata.n_obs} cells x {adata.n_vars} genes, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
