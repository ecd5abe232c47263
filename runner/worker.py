"""Run a model's ``predict`` in the model's own environment: ``python -I worker.py REQUEST.json``.

The runner starts this file with the environment's Python. It imports nothing of cellzoo (the model
brings its own code), reads the aligned counts from an npz (CSR arrays), calls ``predict`` batch by
batch, and writes the output frame as parquet. The request (JSON, small) names the files and options.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline first (runner/__init__.py), before MLflow


def main(request_path: str) -> int:
    import mlflow
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    with open(request_path) as fh:
        request = json.load(fh)
    with np.load(request["counts"], allow_pickle=False) as arrays:
        counts = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(arrays["shape"]))
        totals = arrays.get("cell_totals")
    model = mlflow.pyfunc.load_model(request["model"])
    batch_size = int(request["batch_size"])
    params = request.get("params") or {}

    def batch_params(start: int) -> dict | None:
        if totals is None:
            return params or None
        return params | {"cell_totals": totals[start : start + batch_size]}

    # a PythonModel's own predict, as runner.invoke.call_predict calls it (MLflow's check of every element of
    # params['cell_totals'] costs more than the model); the worker imports nothing of cellzoo, so it is restated
    wrapper = getattr(model, "_model_impl", None)
    python_model = getattr(wrapper, "python_model", None)

    def predict(block, block_params):
        if python_model is None:
            return model.predict(block, params=block_params)
        return python_model.predict(getattr(wrapper, "context", None), block, params=block_params)

    frames = [
        predict(counts[start : start + batch_size], batch_params(start))
        for start in range(0, counts.shape[0], batch_size)
    ]
    pd.concat(frames, ignore_index=True).to_parquet(request["output"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
