"""A zoo model is correct by itself on a DataFrame (what `mlflow models serve` and `spark_udf` send): columns
matched by gene name, a missing gene (absent, or NaN) never read as zero, non-counts and too small an overlap
refused; in-process and through a real `mlflow models serve` on 127.0.0.1, on Kang 2018 against `annotate`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import requests

from tests.conftest import BIN
from tests.servers import free_port

pytestmark = pytest.mark.slow


def request_frame(frame: pd.DataFrame, genes: list[str]) -> pd.DataFrame:
    """What a user sends: the model's genes the query has (no column for the others), each cell's total over its
    genes but the technical ones (the model's metadata `cell_totals_exclude`, as the README shows)."""
    from model_zoo.novelty import TECHNICAL

    totals = frame.loc[:, ~frame.columns.str.contains(TECHNICAL)].sum(axis=1)
    return frame[[g for g in genes if g in frame.columns]].assign(total_counts=totals)


def model_genes(model_dir) -> list[str]:
    return (model_dir / "artifacts" / "genes.txt").read_text().split()


def test_dataframe_answers_as_annotate_and_a_missing_gene_is_missing(pbmc_dir, kang_frame, kang_answers):
    import mlflow

    model = mlflow.pyfunc.load_model(str(pbmc_dir))
    genes = model_genes(pbmc_dir)
    sent = request_frame(kang_frame, genes).astype(np.float64)
    shuffled = sent[np.random.default_rng(0).permutation(sent.columns)]  # matched by name, not by position
    assert (model.predict(shuffled)["answer"].to_numpy() == kang_answers).all()
    # a gene the query lacks sent as a column of NaN is missing too; the same gene sent as 0 would not be
    absent = [g for g in genes if g not in kang_frame.columns]
    as_nan = model.predict(sent.reindex(columns=[*sent.columns, *absent]))["answer"].to_numpy()
    assert (as_nan == kang_answers).all()
    as_zero = model.predict(sent.reindex(columns=[*sent.columns, *absent], fill_value=0.0))["answer"].to_numpy()
    assert (as_zero == kang_answers).mean() < 0.8
    assert {c.name for c in model.metadata.get_input_schema().inputs} == {*genes, "total_counts"}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda f: np.log1p(f), "non-integer values"),
        (lambda f: f.assign(**{f.columns[0]: -1.0}), "negative values"),
        (lambda f: f.iloc[:, :3], "only 3 of the model's"),
        (lambda f: f.assign(**{f.columns[0]: f.iloc[:, 0].where(f.index != f.index[0])}), "is NaN for 1 of"),
    ],
    ids=["log1p", "negative", "three-genes", "nan-in-a-measured-gene"],
)
def test_dataframe_that_is_not_counts_is_refused_with_what_to_do(pbmc_dir, kang_frame, change, needle):
    import mlflow
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(str(pbmc_dir))
    sent = change(kang_frame[[g for g in model_genes(pbmc_dir) if g in kang_frame.columns]].iloc[:50])
    with pytest.raises(ValueError, match=needle) as refused:
        model.predict(sent.astype(np.float64))
    assert isinstance(refused.value, MlflowException)  # mlflow models serve answers it with HTTP 400


def test_mlflow_models_serve_answers_as_annotate(pbmc_dir, kang_frame, kang_answers, tmp_path):
    port = free_port()  # serve binds 127.0.0.1 by default
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", str(pbmc_dir), "--env-manager", "local", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "serve.log", "w"),  # noqa: SIM115 (the server outlives this statement)
        env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"},  # serve runs `uvicorn` from PATH
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while not _answers_ping(url):
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.time() < deadline, "mlflow models serve did not answer /ping within 180 s"
            time.sleep(1)
        genes = model_genes(pbmc_dir)
        sent = request_frame(kang_frame, genes).astype(np.int64)  # JSON integers, as counts are
        answer = _invoke(url, sent)
        assert answer.status_code == 200, answer.text
        served = np.array([row["answer"] for row in answer.json()["predictions"]])
        assert (served == kang_answers).all()
        for refused, needle in [
            (np.log1p(sent.iloc[:20].drop(columns="total_counts")), "raw counts"),
            (sent.iloc[:20, :3], "at least"),
        ]:
            answer = _invoke(url, refused)
            assert answer.status_code == 400 and needle in answer.json()["message"], answer.text
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _answers_ping(url: str) -> bool:
    try:
        return requests.get(f"{url}/ping", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def _invoke(url: str, frame: pd.DataFrame) -> requests.Response:
    body = {"dataframe_split": {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}}
    return requests.post(
        f"{url}/invocations", data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=120
    )
