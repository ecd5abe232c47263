"""A SYNTHETIC large query for the scale benchmark: real cells of the SoupX PBMC reference, resampled.

Cells are drawn from the reference with replacement and each count ``c`` is replaced by a draw of
Poisson(c) (zeros dropped), so the cells keep the reference's expression profiles and labels but no
two are identical. The file is an ordinary h5ad (anndata's on-disk layout, uncompressed as anndata
writes by default), written chunk by chunk with h5py, so a million cells never sit in memory:

    X     CSR group: data float32, indices int32, indptr int64, with anndata's encoding attributes
    obs   index ``syn-000000001``, ...; ``Annotation``: the label of the reference cell drawn
    var   the reference's var (or the ``genes`` subset of it)
    uns   ``source`` says the file is synthetic and how it was made; ``synthetic``: the settings

    python benchmarks/synthetic.py 100000 [--data-dir DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import write_elem

from runner.files import atomic_path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "data" / "pbmc" / "soupx_pbmc4k.h5ad"
LABEL = "Annotation"
FORMAT_VERSION = 1  # bump when the content written for the same (n_cells, seed) changes
HDF5_CHUNK = 1 << 20  # values per HDF5 chunk of the resizable datasets (4 MB of float32)


def default_data_dir() -> Path:
    """Where synthetic queries are cached: ``$CELLZOO_BENCH_DIR``, else ``/tmp/cellzoo-bench``."""
    return Path(os.environ.get("CELLZOO_BENCH_DIR", "/tmp/cellzoo-bench"))


def synthetic_name(n_cells: int, seed: int) -> str:
    return f"synthetic-pbmc-n{n_cells}-seed{seed}-v{FORMAT_VERSION}.h5ad"


def cached_synthetic(n_cells: int, *, data_dir: Path | None = None, seed: int = 0) -> Path:
    """The synthetic query of ``n_cells`` cells in ``data_dir``, written first if it is not there yet."""
    path = (data_dir or default_data_dir()) / synthetic_name(n_cells, seed)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic(path, n_cells, seed=seed)
    return path


def write_synthetic(
    path: str | Path,
    n_cells: int,
    *,
    reference: str | Path = REFERENCE,
    seed: int = 0,
    chunk_size: int = 50_000,
    genes: Sequence[str] | None = None,
) -> Path:
    """Write a synthetic query of ``n_cells`` cells resampled from ``reference`` to ``path`` (an h5ad).

    Each cell is a reference cell drawn with replacement whose counts are redrawn as Poisson(count);
    ``genes`` restricts the file to those reference genes (in that order). The file is written to a
    temporary name beside ``path`` and renamed into place. Writes ``X`` (raw counts, CSR float32),
    ``obs['Annotation']`` (the drawn cell's label), ``var`` (the reference's), ``uns['source']`` and
    ``uns['synthetic']`` (reference, seed, cells, format version).
    """
    path = Path(path)
    ref = ad.read_h5ad(reference)
    if genes is not None:
        ref = ref[:, list(genes)]
    counts = sp.csr_matrix(ref.X)
    labels = ref.obs[LABEL].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    drawn_labels = []
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0"})
        x.attrs["shape"] = np.array([n_cells, counts.shape[1]], dtype=np.int64)
        data = x.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(HDF5_CHUNK,))
        indices = x.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(HDF5_CHUNK,))
        indptr = x.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
        indptr[0] = 0
        for start in range(0, n_cells, chunk_size):
            cells = rng.integers(0, counts.shape[0], size=min(chunk_size, n_cells - start))
            chunk = _resample(counts[cells], rng)
            offset = data.shape[0]
            for dataset, values in ((data, chunk.data), (indices, chunk.indices)):
                dataset.resize((offset + chunk.nnz,))
                dataset[offset:] = values
            indptr[start + 1 : start + 1 + len(cells)] = offset + chunk.indptr[1:]
            drawn_labels.append(labels[cells])
        barcodes = [f"syn-{i:09d}" for i in range(1, n_cells + 1)]
        obs = pd.DataFrame({LABEL: pd.Categorical(np.concatenate(drawn_labels))}, index=barcodes)
        write_elem(f, "obs", obs)
        write_elem(f, "var", ref.var)
        write_elem(f, "uns", _uns(reference, n_cells, seed, genes))
        for empty in ("obsm", "varm", "obsp", "varp", "layers"):
            write_elem(f, empty, {})
    return path


def _resample(cells: sp.csr_matrix, rng: np.random.Generator) -> sp.csr_matrix:
    """Each stored count ``c`` replaced by a Poisson(c) draw; the zeros drawn are dropped."""
    redrawn = rng.poisson(cells.data).astype(np.float32)
    keep = redrawn > 0
    row = np.repeat(np.arange(cells.shape[0]), np.diff(cells.indptr))
    per_row = np.bincount(row[keep], minlength=cells.shape[0])
    indptr = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
    return sp.csr_matrix((redrawn[keep], cells.indices[keep].astype(np.int32), indptr), shape=cells.shape)


def _uns(reference: str | Path, n_cells: int, seed: int, genes: Sequence[str] | None) -> dict:
    return {
        "source": (
            f"synthetic: {n_cells} cells drawn with replacement from {Path(reference).name} (SoupX PBMC 4k), "
            "each count c redrawn as Poisson(c); for benchmarks only, not real data"
        ),
        "synthetic": {
            "reference": Path(reference).name,
            "seed": seed,
            "n_cells": n_cells,
            "genes": "all" if genes is None else len(genes),
            "format_version": FORMAT_VERSION,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_cells", type=int)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(cached_synthetic(args.n_cells, data_dir=args.data_dir, seed=args.seed))


if __name__ == "__main__":
    main()


def add_size_options(parser, quick_sizes: tuple[int, ...], fragment: str) -> None:
    """The options of a benchmark run on SYNTHETIC queries: ``--sizes``, ``--quick`` (``quick_sizes``),
    ``--data-dir`` (the cache), ``--docs-dir`` (where ``fragment`` goes) and ``--mem-limit-gb``."""
    from benchmarks.accuracy import DEFAULT_OUT

    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], help="cells, comma-separated")
    parser.add_argument("--quick", action="store_true", help=f"synthetic size {quick_sizes} only")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="synthetic queries are cached here")
    parser.add_argument("--docs-dir", type=Path, default=DEFAULT_OUT, help=f"folder for {fragment}")
    parser.add_argument("--mem-limit-gb", type=float, default=20.0, help="kill a run whose process tree goes above")
