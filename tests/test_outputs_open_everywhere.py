"""An annotated file opens, without conversion, in scanpy, in `cellxgene-schema`'s checks and in `cellxgene launch`.

The file is real: Kang 2018's PBMC annotated with the zoo's `pbmc` by the `annotate` command. The two CELLxGENE
tools run from their own environments (tests/tool_envs.py); the explorer is a real server on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import requests
import scipy.sparse as sp

import cellzoo
from runner.keys import ResultKeys
from tests.conftest import EXAMPLE, KANG, ROOT, data_file, run_cli, truth_terms
from tests.tool_envs import tool_python

matplotlib.use("Agg")

KEYS = ResultKeys("pbmc")
SUBSET = ["B cells", "CD14+ Monocytes"]  # Kang's own clusters: a subset without T and NK cells
MARKERS = ["MS4A1", "CD14", "LYZ", "CD3E", "NKG7"]


@pytest.fixture(scope="module")
def annotated(tmp_path_factory) -> Path:
    """Kang 2018 annotated with `pbmc` by the CLI, as a user makes the file."""
    folder = tmp_path_factory.mktemp("kang")
    out = folder / "kang_pbmc.h5ad"
    done = run_cli(
        "annotate", str(data_file(KANG)), "-m", "pbmc", "-o", str(out), env={"CELLZOO_CACHE_DIR": str(folder / "cache")}
    )
    assert done.returncode == 0, done.stderr
    return out


def categorical_keys(adata) -> list[str]:
    return [k for k in KEYS.obs_keys() if k in adata.obs and isinstance(adata.obs[k].dtype, pd.CategoricalDtype)]


def test_categories_are_those_that_occur_and_plain_strings(annotated):
    from_api = cellzoo.annotate(ad.read_h5ad(EXAMPLE), "pbmc", copy=True)  # in memory, never written
    for adata in (ad.read_h5ad(annotated), from_api):
        assert len(categorical_keys(adata)) == 9
        for key in categorical_keys(adata):
            column = adata.obs[key]
            assert set(column.cat.categories) == set(column.unique()), key
            assert {type(c) for c in column.cat.categories} == {str}, key  # cellxgene-schema: one type


@pytest.mark.slow
def test_scanpy_plots_and_rank_genes_groups_on_a_subset(annotated):
    import scanpy as sc

    adata = sc.read_h5ad(annotated)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    subset = adata[adata.obs["cluster_id"].isin(SUBSET)]
    assert set(subset.obs[KEYS.predicted]) < set(adata.obs[KEYS.predicted])  # some answers are not in it
    for key in (KEYS.predicted, KEYS.level("lineage")):
        for plot in (sc.pl.dotplot, sc.pl.matrixplot, sc.pl.stacked_violin):
            plot(subset, MARKERS, groupby=key, show=False)
        matplotlib.pyplot.close("all")
    sizes = subset.obs[KEYS.predicted].value_counts()
    assert (sizes >= 2).all(), f"scanpy needs two cells a group for rank_genes_groups: {sizes.to_dict()}"
    ranked = subset.copy()
    sc.tl.rank_genes_groups(ranked, KEYS.predicted)
    assert set(ranked.uns["rank_genes_groups"]["names"].dtype.names) == set(sizes.index)
    # the layout issue 16 reported (every class a category, occurring or not) fails these very calls
    old = adata.copy()
    old.obs[KEYS.predicted] = old.obs[KEYS.predicted].cat.add_categories(["pDC", "Platelet"])
    with pytest.raises(KeyError, match="pDC"):
        sc.pl.dotplot(old, MARKERS, groupby=KEYS.predicted, show=False)
    with pytest.raises(ValueError, match="pDC"):
        sc.tl.rank_genes_groups(old, KEYS.predicted)


def schema_complete(adata: ad.AnnData) -> ad.AnnData:
    """``adata`` with what the CELLxGENE schema requires beside our annotation, as a submitter adds it: Ensembl
    ids of the schema's GENCODE release as var names (the genes it does not know dropped), the authors' cell
    types as Cell Ontology ids, donor, assay, tissue, title, organism. Our keys are left as written."""
    known = set(pd.read_csv(ROOT / "runner" / "data" / "genes_human.tsv.gz", sep="\t")["ensembl_id"])
    ids = adata.var["ENSEMBL"].astype(str)
    done = adata[:, (ids.isin(known) & ~ids.duplicated()).to_numpy()].copy()
    done.var = pd.DataFrame({"feature_is_filtered": False}, index=pd.Index(done.var["ENSEMBL"].astype(str)))
    done.X = sp.csr_matrix(done.X, dtype=np.float32)  # raw counts
    fixed = {
        "assay_ontology_term_id": "EFO:0009899",  # 10x 3' v2
        "development_stage_ontology_term_id": "unknown",
        "disease_ontology_term_id": "PATO:0000461",  # normal
        "self_reported_ethnicity_ontology_term_id": "unknown",
        "sex_ontology_term_id": "unknown",
        "tissue_ontology_term_id": "UBERON:0000178",  # blood
        "tissue_type": "tissue",
        "suspension_type": "cell",
    }
    for column, value in fixed.items():
        done.obs[column] = pd.Categorical([value] * done.n_obs)
    done.obs["cell_type_ontology_term_id"] = pd.Categorical(truth_terms(KANG, done.obs["cluster_id"]))
    done.obs["donor_id"] = pd.Categorical(done.obs["sample_id"].astype(str).str[-3:])
    done.obs["is_primary_data"] = False
    done.uns["title"] = "Kang 2018 PBMC, annotated by cellzoo pbmc"
    done.uns["organism_ontology_term_id"] = "NCBITaxon:9606"
    return done


VALIDATE = """
import json, sys
import dask
from cellxgene_schema.validate import Validator
found = {}
with dask.config.set({"scheduler": "threads"}):  # as `cellxgene-schema validate` runs it
    for path in sys.argv[1:]:
        validator = Validator()
        validator.validate_adata(path)
        found[path] = {"valid": validator.is_valid, "errors": validator.errors, "warnings": validator.warnings}
print(json.dumps(found))
"""


def mentions_ours(messages: list[str]) -> list[str]:
    ours = [*KEYS.obs_keys(), *KEYS.obsm_keys()]
    return [m for m in messages if any(f"'{key}'" in m or f"{key} " in m for key in ours)]


@pytest.mark.slow
def test_cellxgene_schema_accepts_the_annotation_fields(annotated, tmp_path, monkeypatch):
    python = tool_python("cellxgene-schema", monkeypatch)
    complete = schema_complete(ad.read_h5ad(annotated))
    files = {name: tmp_path / f"{name}.h5ad" for name in ("ours", "dataframe", "unused")}
    complete.write_h5ad(files["ours"])
    # two layouts the checks must catch, so that this test can fail: probabilities as a DataFrame in obsm
    # (the first layout of issue 16), and a category no cell has (the second)
    frame = complete.copy()
    frame.obsm[KEYS.probabilities] = pd.DataFrame(
        frame.obsm[KEYS.probabilities], index=frame.obs_names, columns=list(frame.uns["pbmc"]["classes"])
    )
    frame.write_h5ad(files["dataframe"])
    unused = complete.copy()
    unused.obs[KEYS.predicted] = unused.obs[KEYS.predicted].cat.add_categories(["pDC"])
    unused.write_h5ad(files["unused"])
    done = subprocess.run(
        [str(python), "-c", VALIDATE, *map(str, files.values())], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = {name: json.loads(done.stdout.strip().splitlines()[-1])[str(path)] for name, path in files.items()}
    ours = found["ours"]
    assert ours["valid"] and ours["errors"] == [], ours["errors"]
    # one note on our keys: the probabilities (not an embedding) are not offered as a layout in the explorer
    assert mentions_ours(ours["warnings"]) == [
        f"WARNING: Embedding key in 'adata.obsm' {KEYS.probabilities} is not 'spatial' nor does it start with "
        "'X_'. Thus, it will not be available in Explorer"
    ]
    assert not found["dataframe"]["valid"]
    assert any(KEYS.probabilities in e and "numpy.ndarray" in e for e in found["dataframe"]["errors"])
    assert any(KEYS.predicted in w and "zero observations" in w for w in found["unused"]["warnings"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DECODE = """
import json, sys
from server.common.fbs.matrix import decode_matrix_fbs  # the explorer's own decoder of its wire format
print(json.dumps([decode_matrix_fbs(open(p, "rb").read()).to_dict(orient="list") for p in sys.argv[1:]]))
"""


def explorer_layout(embedding: np.ndarray) -> np.ndarray:
    """What the explorer sends for a layout: its first two columns scaled isotropically into [0, 1] and centred
    (cellxgene 1.3.0, ``DataAdaptor.normalize_embedding``)."""
    xy = embedding[:, :2].astype(np.float64)
    low, high = np.nanmin(xy, axis=0), np.nanmax(xy, axis=0)
    scale = np.max(high - low)
    return (xy - low) / scale + 0.5 - (high - low) / scale / 2


@pytest.mark.slow
def test_cellxgene_launch_serves_the_labels_and_the_umap(annotated, tmp_path, monkeypatch):
    python = tool_python("cellxgene", monkeypatch)
    adata = ad.read_h5ad(annotated)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v0.2"
    log = tmp_path / "cellxgene.log"
    command = [str(python.parent / "cellxgene"), "--no-upgrade-check", "launch", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--disable-annotations", "--disable-gene-sets-save", str(annotated)]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        schema = None
        deadline = time.monotonic() + 180
        while schema is None and time.monotonic() < deadline and server.poll() is None:
            try:
                schema = requests.get(f"{api}/schema", timeout=5).json()["schema"]
            except requests.ConnectionError:
                time.sleep(0.5)
        assert schema is not None, f"cellxgene launch did not answer:\n{log.read_text()[-3000:]}"
        columns = {c["name"]: c for c in schema["annotations"]["obs"]["columns"]}
        for key in categorical_keys(adata):
            assert columns[key]["type"] == "categorical"
            assert columns[key]["categories"] == list(adata.obs[key].cat.categories), key
        assert columns[KEYS.uncertainty]["type"] == columns[KEYS.novelty]["type"] == "float32"
        assert {"pbmc", "pbmc_umap"} <= {layout["name"] for layout in schema["layout"]["obs"]}
        # the browser's requests: the flatbuffers wire format, gzip accepted (requests sends that by default;
        # without it cellxgene 1.3.0 under Werkzeug 3.1 breaks off any data answer: 'applications must write bytes')
        binary = {"Accept": "application/octet-stream"}
        labels = [KEYS.predicted, KEYS.level("lineage"), KEYS.ontology_term_id]
        answers = [
            requests.get(f"{api}/annotations/obs", params={"annotation-name": labels}, headers=binary, timeout=60),
            requests.get(f"{api}/layout/obs", params={"layout-name": "pbmc_umap"}, headers=binary, timeout=60),
        ]
        for n, answer in enumerate(answers):
            assert answer.status_code == 200, answer.text
            (tmp_path / f"{n}.fbs").write_bytes(answer.content)
        decoded = subprocess.run(
            [str(python), "-c", DECODE, str(tmp_path / "0.fbs"), str(tmp_path / "1.fbs")],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        served_labels, served_umap = json.loads(decoded.stdout)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    for key in labels:
        assert served_labels[key] == adata.obs[key].astype(str).tolist(), key
    umap = np.column_stack([served_umap["pbmc_umap_0"], served_umap["pbmc_umap_1"]])
    np.testing.assert_allclose(umap, explorer_layout(adata.obsm[KEYS.umap]), atol=1e-5)
