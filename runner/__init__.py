"""cellzoo's runner: resolve a model, read and align a query, invoke the model, write the results."""

__version__ = "0.1.0"
