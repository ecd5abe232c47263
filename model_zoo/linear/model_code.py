"""MLflow "models from code" entry point of the ``linear`` family (copied into every saved model)."""

import mlflow

from model_zoo.linear.pyfunc import LinearAnnotator

mlflow.models.set_model(LinearAnnotator())
