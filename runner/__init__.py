"""cellzoo's runner: resolve a model, read and align a query, invoke the model, write the results."""

import os

__version__ = "0.1.0"

# Offline first: no call home from any process cellzoo starts. MLflow (3.x) starts a telemetry client when it is
# imported unless this is set; the client's thread also writes os.environ. A user's explicit value is kept.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
