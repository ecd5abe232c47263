"""MLflow "models from code" entry point of the ``scanvi`` family (copied into every saved model)."""

import mlflow

from model_zoo.scanvi.pyfunc import ScanviAnnotator

mlflow.models.set_model(ScanviAnnotator())
