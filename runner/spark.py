"""Annotate a Spark DataFrame of cells x genes with a zoo model, through ``mlflow.pyfunc.spark_udf``.

    import cellzoo
    annotated = cellzoo.annotate_spark(df, "pbmc")   # df: one row per cell, one numeric column per gene
    annotated.select("pbmc_predicted", "pbmc_uncertainty", "pbmc_novelty").show()

What a user would otherwise write by hand: the model's gene columns quoted (names with ``-`` or ``.``) and
cast to ``double`` inside ``F.struct``, each cell's total over all its genes but the technical ones (the
novelty score's ``total_counts``: MLflow drops the columns the signature does not name), the UDF's result
type (read from the model's answer on a few rows, which also checks the input on the driver first) and the
answer options as ``params``. The model runs in the Spark workers' Python (``env_manager="local"``), block by
block as Spark hands them over; each block is aligned by column name, so a gene the DataFrame lacks is
missing, never zero (:func:`model_zoo.contract.frame_matrix`).
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd  # at the top: pyspark reads the pandas UDF's type hints (this module is imported on use)

from runner import keys
from runner.errors import InputError, UsageError
from runner.keys import ResultKeys
from runner.options import ModelOptions, RunOptions, split_options

TOTAL_COUNTS = "total_counts"  # the signature's column for each cell's total (model_zoo.contract.TOTAL_COUNTS)
PROBE_CELLS = 50  # rows the model answers on the driver first: the result type, and the input's checks
ANSWER_OPTIONS = (keys.UNASSIGNED_THRESHOLD, keys.NOVELTY_THRESHOLD, keys.BACKOFF)


def _column(name: str):
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def _spark_type(dtype):
    from pyspark.sql import types as T

    if dtype.kind == "f":
        return T.FloatType() if dtype.itemsize == 4 else T.DoubleType()
    if dtype.kind in "iu":
        return T.LongType()
    if dtype.kind == "b":
        return T.BooleanType()
    return T.StringType()


def annotate_spark(df, model: str, *, key_added: str | None = None, genes: list[str] | None = None, **options: Any):
    """``df`` with the answers of zoo model ``model`` added, as ``annotate`` names them (key ``K``:
    ``key_added``, else the model's name): ``K_predicted``, ``K_ontology_term_id``, ``K_uncertainty``,
    ``K_novelty``, ``K_finest``, ``K_finest_ontology_term_id``, ``K_answer_kind``, ``K_<level>`` and its id,
    ``K_probabilities`` (a struct, one field per class), ``X_K`` and ``X_K_umap`` (arrays).

    ``genes``: the gene columns (default: every numeric column of ``df``; pass them when ``df`` has other
    numeric columns, such as a QC metric, which would count into each cell's total). Gene columns are named
    with the model's gene ids (``cellzoo.load_model(model).genes``). ``options``: ``unassigned_threshold``,
    ``novelty_threshold``, ``backoff`` and where the model may come from (``trust``, ``offline``,
    ``registries``, ``tracking_uri``), checked as ``annotate`` checks them.
    """
    import mlflow
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from runner.invoke import load_pyfunc, read_model_info

    run, source = split_options(options, (RunOptions, ModelOptions))
    params = {name: getattr(run, name) for name in ANSWER_OPTIONS}
    info = read_model_info(source.resolve(model).path)
    result = ResultKeys(key_added or info.name)
    taken = [c for c in (*result.obs_keys(), *result.obsm_keys()) if c in df.columns]
    if taken:
        raise UsageError(
            f"the DataFrame already has {', '.join(taken)}: drop those columns, or pass key_added= with another key"
        )
    numeric = [f.name for f in df.schema.fields if isinstance(f.dataType, T.NumericType)]
    genes = list(genes) if genes is not None else numeric
    missing = [g for g in genes if g not in df.columns]
    if missing:
        raise InputError(f"genes names {len(missing)} columns the DataFrame lacks, e.g. {missing[0]!r}")
    genes = [g for g in genes if g != TOTAL_COUNTS]
    model_genes = set(info.genes)
    sent = [g for g in genes if g in model_genes]
    if not sent:
        example = ", ".join(list(info.genes)[:3])
        raise InputError(
            f"none of the DataFrame's columns is one of {info.name}'s genes (its gene ids: {example}, ...)"
        )
    pattern = info.metadata.get(keys.CELL_TOTALS_EXCLUDE)
    counted = [g for g in genes if not (pattern and re.search(pattern, g))]

    @F.pandas_udf("double")
    def totals(cells: pd.DataFrame) -> pd.Series:  # each cell's total over its genes but the technical ones
        return cells.sum(axis=1).astype("float64")

    total = totals(F.struct(*[_column(g) for g in counted])) if counted else F.lit(0.0)
    inputs = [_column(g).cast("double").alias(g) for g in sent] + [total.alias(TOTAL_COUNTS)]
    probe = df.select(*inputs).limit(PROBE_CELLS).toPandas()
    answered = load_pyfunc(info).predict(probe, params=params)  # refusals raise here
    result_type = T.StructType([T.StructField(c, _spark_type(answered[c].dtype)) for c in answered.columns])
    udf = mlflow.pyfunc.spark_udf(
        df.sparkSession, str(info.path), result_type=result_type, env_manager="local", params=params
    )
    output = f"__{result.key}_output"
    annotated = df.withColumn(output, udf(F.struct(*inputs)))

    def field(name: str):
        return F.col(output).getField(name)

    columns = [field(name).alias(alias) for name, alias in result.of_output(answered.columns).items()]
    probabilities = [c for c in answered.columns if c.startswith(keys.PROB_PREFIX)]
    columns.append(
        F.struct(*[field(c).alias(c.removeprefix(keys.PROB_PREFIX)) for c in probabilities]).alias(result.probabilities)
    )
    for prefix, name in ((keys.EMB_PREFIX, result.embedding), (keys.UMAP_PREFIX, result.umap)):
        parts = [c for c in answered.columns if c.startswith(prefix)]
        if parts:
            columns.append(F.array(*[field(c) for c in parts]).alias(name))
    return annotated.select(*[_column(c) for c in df.columns], *columns)
