"""The seed pattern, as a baseline the job is timed against in the same benchmark run.

The recipe this project started from, written plainly and run as its users run it:
``binaryFile`` -> a repartition into a few tasks per core -> an iterator pandas UDF that builds
Keras ``MobileNetV2(weights=None)`` once per task, receives the weights as a broadcast and calls
``model.predict`` per Arrow batch -> ``array_to_vector`` -> StandardScaler + PCA fitted in
Spark ML -> Parquet. The iterator UDF exists to build the model once and reuse it; without the
repartition ``binaryFile`` makes one task per ~30 small photos and most of the run is model
building (``--model-per task``, kept only as a labelled extra row). Nothing of the job is
imported, so an improvement in the job never speeds the baseline up.

    python benchmarks/seed.py --input DIR --output DIR --weights FILE.h5 --image-size 224 --k 64
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Iterator

import numpy as np
import pandas as pd

# Tasks per core for the featurizing stage: the model is built once per task, so a few per
# core (one slow task does not leave a core idle at the end) and never one per small split.
TASKS_PER_CORE = 2
# The collector EMR's runtime gives Spark's JVMs, as the job's local sessions get it
# (emr_serverless_job.main.LOCAL_DEFAULT_JAVA_OPTIONS, copied: the seed imports nothing of the
# job), so neither side of the comparison runs a JVM the other does not.
EMR_DEFAULT_JAVA_OPTIONS = "-XX:+UseParallelGC"


def build_model(size: int) -> object:
    import keras

    return keras.applications.MobileNetV2(
        input_shape=(size, size, 3), include_top=False, weights=None, pooling="avg"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--master", default=f"local[{os.cpu_count() or 1}]")
    parser.add_argument(
        "--model-per",
        choices=("worker", "task"),
        default="worker",
        help="worker: repartition into TASKS_PER_CORE tasks per core, as users of the pattern "
        "do (default); task: binaryFile's own splits, a model per ~30 photos (a strawman)",
    )
    args = parser.parse_args()

    from pyspark.ml import Pipeline
    from pyspark.ml.feature import PCA, StandardScaler
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers: this venv's Python
    spark = (
        SparkSession.builder.master(args.master)
        .appName("seed-pattern")
        .config("spark.driver.defaultJavaOptions", EMR_DEFAULT_JAVA_OPTIONS)
        .config("spark.executor.defaultJavaOptions", EMR_DEFAULT_JAVA_OPTIONS)
        .getOrCreate()
    )
    size = args.image_size
    template = build_model(size)
    template.load_weights(args.weights)
    shipped = spark.sparkContext.broadcast(template.get_weights())

    @F.pandas_udf("array<float>")
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        from keras.applications.mobilenet_v2 import preprocess_input
        from PIL import Image

        model = build_model(size)
        model.set_weights(shipped.value)
        for contents in batches:
            pixels = np.stack(
                [
                    np.asarray(
                        Image.open(io.BytesIO(data)).convert("RGB").resize((size, size)),
                        dtype=np.float32,
                    )
                    for data in contents
                ]
            )
            features = model.predict(preprocess_input(pixels), verbose=0)
            yield pd.Series(list(features))

    images = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", "*.jpg")
        .option("recursiveFileLookup", "true")
        .load(args.input)
    )
    if args.model_per == "worker":
        images = images.repartition(TASKS_PER_CORE * spark.sparkContext.defaultParallelism)
    features = images.select(
        "path",
        F.element_at(F.split("path", "/"), -2).alias("label"),
        featurize("content").alias("features"),
    ).withColumn("vector", array_to_vector("features"))
    features.cache()
    pipeline = Pipeline(
        stages=[
            StandardScaler(inputCol="vector", outputCol="scaled", withMean=True, withStd=True),
            PCA(k=args.k, inputCol="scaled", outputCol="pca"),
        ]
    ).fit(features)
    pipeline.transform(features).drop("vector", "scaled").write.mode("overwrite").parquet(
        args.output
    )
    print(spark.read.parquet(args.output).count())
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
