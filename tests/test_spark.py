"""A Spark DataFrame of cells x genes annotated in one call (`cellzoo.annotate_spark`, through MLflow's
`spark_udf`), on a real local Spark (`local[2]`, 127.0.0.1): Kang 2018's answers equal `annotate`'s."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

import cellzoo
from runner.errors import InputError, UsageError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"  # the driver and its workers talk on the loopback only
    session = (
        SparkSession.builder.master("local[2]")
        .appName("cellzoo-test")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    yield session
    session.stop()
    # py4j logs "Closing down clientserver connection" from a finaliser at exit, after pytest closed the stream
    logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="module")
def kang_cells(spark, kang_frame):
    """Kang's cells as a Spark DataFrame: a barcode column and one integer column per gene (symbols, some with
    `-` or `.` in their names), as a user would have them."""
    frame = kang_frame.astype("int32").rename_axis("barcode").reset_index()
    return spark.createDataFrame(frame)


def test_spark_answers_equal_annotate(kang_cells, pbmc_dir, kang_answers, kang_frame):
    annotated = cellzoo.annotate_spark(kang_cells, str(pbmc_dir))
    rows = annotated.select("barcode", "pbmc_predicted", "pbmc_uncertainty", "pbmc_novelty", "pbmc_probabilities")
    result = rows.toPandas().set_index("barcode").loc[kang_frame.index]
    assert (result["pbmc_predicted"].to_numpy() == kang_answers).mean() == 1.0
    assert result["pbmc_uncertainty"].between(0, 1).all() and np.isfinite(result["pbmc_novelty"]).all()
    assert any("-" in c or "." in c for c in kang_frame.columns)  # names Spark needs quoted were sent
    first = result["pbmc_probabilities"].iloc[0]  # a struct, one field per class (a dict in pandas)
    assert abs(sum(first.values()) - 1) < 1e-4 and set(first) == set(cellzoo.load_model(str(pbmc_dir)).labels)


def test_spark_refuses_what_annotate_refuses(spark, kang_cells, pbmc_dir):
    no_genes = spark.createDataFrame([(1.0, 2.0)], ["not_a_gene", "nor_this"])
    with pytest.raises(InputError, match="none of the DataFrame's columns"):
        cellzoo.annotate_spark(no_genes, str(pbmc_dir))
    from pyspark.sql import functions as F

    annotated_before = kang_cells.withColumn("pbmc_predicted", F.lit("T_CD4"))
    with pytest.raises(UsageError, match="already has pbmc_predicted"):  # never two columns of one name
        cellzoo.annotate_spark(annotated_before, str(pbmc_dir))

    logged = kang_cells.select("barcode", *[F.log1p(F.col(f"`{c}`")).alias(c) for c in kang_cells.columns[1:]])
    with pytest.raises(ValueError, match="raw counts"):
        cellzoo.annotate_spark(logged, str(pbmc_dir))
