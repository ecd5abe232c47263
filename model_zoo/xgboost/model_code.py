"""MLflow "models from code" entry point of the ``xgboost`` family (copied into every saved model)."""

import mlflow

from model_zoo.xgboost.pyfunc import XGBoostAnnotator

mlflow.models.set_model(XGBoostAnnotator())
