"""cellzoo's model families, recipes and model cards. Never imports ``runner``."""

import os

# Offline first, as in ``runner``: MLflow's telemetry is off in `python -m model_zoo.build` and wherever a zoo
# model's code is imported before MLflow (a user's explicit value is kept).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
