"""Annotation on a ``dask.distributed`` cluster: ``annotate --scheduler ADDRESS``, ``scheduler=`` in the API.

The annotate process is the cluster's client. It reads, checks and aligns the query a block of cells at a
time, exactly as the streamed run does (h5ad, zarr, any reader), and sends each aligned block to a worker,
which runs the model on it and returns the contract's frame; the client writes the output as usual. The
loaded model is sent to every worker once (``Client.scatter``, broadcast): the workers need neither the query
file nor the model cache, only cellzoo and the model's pins installed in their Python. The labels are those
of the streamed run (each block is annotated alone in both). At most ``IN_FLIGHT`` blocks per worker thread
are out at a time, so the client holds a bounded number of blocks, as the streamed run does.

A model that maps the whole query at once (``scanvi``) or that needs an environment of its own is refused:
run it without ``--scheduler``.
"""

from __future__ import annotations

from collections import deque

import pandas as pd

from runner.errors import ModelError, UsageError

IN_FLIGHT = 2  # blocks per worker thread sent ahead of the results
CONNECT_SECONDS = 30


class ClusterPredictor:
    """The model's ``predict`` on the workers of the scheduler at ``address``, block by block, in order."""

    def __init__(self, address: str, model, model_name: str):
        try:
            from distributed import Client
        except ImportError:
            raise UsageError(
                "--scheduler needs dask.distributed, which is not installed: pip install 'cellzoo[dask]'"
            ) from None
        try:
            self.client = Client(address, timeout=CONNECT_SECONDS, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as err:
            raise UsageError(f"cannot reach the dask scheduler at {address!r}: {err}") from None
        try:
            threads = sum(self.client.nthreads().values())
            if threads == 0:
                raise UsageError(f"the dask scheduler at {address!r} has no workers")
            self.limit = IN_FLIGHT * threads
            self.model = self.client.scatter(model, broadcast=True, hash=False)
        except BaseException:
            self.client.close()
            raise
        self.name = model_name
        self.pending: deque = deque()
        self.frames: list[pd.DataFrame] = []

    def submit(self, counts, params: dict | None) -> None:
        """Send one aligned block; collect the oldest results while more than the limit are out."""
        from runner.invoke import predict_batch

        self.pending.append(self.client.submit(predict_batch, self.model, counts, params, pure=False))
        while len(self.pending) > self.limit:
            self._collect()

    def _collect(self) -> None:
        future = self.pending.popleft()
        try:
            self.frames.append(future.result())
        except (ModelError, UsageError):
            raise
        except Exception as err:  # raised on a worker: the model failed there
            raise ModelError(f"model {self.name} failed on a dask worker: {type(err).__name__}: {err}") from None

    def results(self) -> list[pd.DataFrame]:
        """Every block's frame, in the order the blocks were sent."""
        while self.pending:
            self._collect()
        return self.frames

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.client.close()
