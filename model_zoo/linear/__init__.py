"""The ``linear`` family: CellTypist-style logistic regression with PCA imputation of missing genes."""
