"""The ``xgboost`` family: gradient-boosted trees on the ``linear`` family's PCA embedding."""
