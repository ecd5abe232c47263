"""Annotation on a ``dask.distributed`` cluster: ``annotate --scheduler ADDRESS``, ``scheduler=`` in the API.

The annotate process is the cluster's client. It reads, checks and aligns the query a block of cells at a
time, exactly as the streamed run does (h5ad, zarr, any reader), and sends each aligned block to a worker,
which runs the model on it and returns the contract's frame; the client writes the output as usual. The
model's folder is sent to every worker once (``Client.scatter``, broadcast, as the bytes of its archive), and
each worker process unpacks it and loads it as the client does (:func:`runner.invoke.load_pyfunc`), so that it
runs the code the model carries: the workers need neither the query file nor the model cache, only cellzoo and
the model's pins installed in their Python. (Sending the loaded model instead pickles the classes of its code by
value but the modules they call by name, which a worker resolves to its own installed ``model_zoo``: a model
built with other code than the installed cellzoo's would run a mixture of both.) The labels are those
of the streamed run (each block is annotated alone in both). At most ``IN_FLIGHT`` blocks per worker thread
are out at a time, so the client holds a bounded number of blocks, as the streamed run does.

A model that maps the whole query at once (``scanvi``) or that needs an environment of its own is refused:
run it without ``--scheduler``.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from collections import deque
from pathlib import Path

import pandas as pd

from runner.archive import pack_model_dir, safe_extract
from runner.errors import ModelError, UsageError

IN_FLIGHT = 2  # blocks per worker thread sent ahead of the results
CONNECT_SECONDS = 30


class ShippedModel:
    """A model folder as the bytes of its archive (:func:`runner.archive.pack_model_dir`: the same folder gives
    the same bytes), loaded once per worker process by :meth:`load`."""

    def __init__(self, path: Path):
        with tempfile.TemporaryDirectory(prefix="cellzoo-ship-") as tmp:
            archive = Path(tmp) / "model.zip"
            self.sha256, _ = pack_model_dir(path, archive)
            self.archive = archive.read_bytes()

    def load(self):
        """The model's pyfunc in this process, unpacked into a temporary folder on first use. A worker keeps one
        model: another one replaces it (its folder removed); folders of killed workers go at the next unpack."""
        from runner.files import owner_tag, remove_stale
        from runner.invoke import load_pyfunc, read_model_info

        with _LOCK:
            if _LOADED.get("sha256") != self.sha256:
                if "folder" in _LOADED:
                    shutil.rmtree(_LOADED["folder"], ignore_errors=True)
                _LOADED.clear()
                root = Path(tempfile.gettempdir())
                remove_stale(root / f"{WORKER_FOLDER}.*")
                folder = Path(tempfile.mkdtemp(prefix=f"{WORKER_FOLDER}.{owner_tag()}.", dir=root))
                try:
                    archive = folder / "model.zip"
                    archive.write_bytes(self.archive)
                    safe_extract(archive, folder / "model")
                    model = load_pyfunc(read_model_info(folder / "model"))
                except BaseException:
                    shutil.rmtree(folder, ignore_errors=True)
                    raise
                atexit.register(shutil.rmtree, folder, True)
                _LOADED.update(sha256=self.sha256, folder=folder, model=model)
            return _LOADED["model"]


WORKER_FOLDER = "cellzoo-worker-model"  # a worker's unpacked model: WORKER_FOLDER.PID@HOST.RANDOM in its temp dir
_LOADED: dict = {}  # the worker's model: its archive's sha256, its folder, its pyfunc
_LOCK = threading.Lock()


def predict_shipped(shipped: ShippedModel, counts, params: dict | None) -> pd.DataFrame:
    """A worker's task: :func:`runner.invoke.predict_batch` with the shipped model."""
    from runner.invoke import predict_batch

    return predict_batch(shipped.load(), counts, params)


class ClusterPredictor:
    """The model's ``predict`` on the workers of the scheduler at ``address``, block by block, in order."""

    def __init__(self, address: str, model_path: Path, model_name: str):
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
            self.model = self.client.scatter(ShippedModel(model_path), broadcast=True, hash=False)
        except BaseException:
            self.client.close()
            raise
        self.name = model_name
        self.pending: deque = deque()
        self.frames: list[pd.DataFrame] = []

    def submit(self, counts, params: dict | None) -> None:
        """Send one aligned block; collect the oldest results while more than the limit are out."""
        self.pending.append(self.client.submit(predict_shipped, self.model, counts, params, pure=False))
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
