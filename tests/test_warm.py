"""The warm-up job builds each Python worker's model where the featurizing pass finds it."""

from __future__ import annotations

import io

from PIL import Image

from emr_serverless_job import warm
from emr_serverless_job.featurize import RESULT_SCHEMA, Counters, FeaturizerSpec, make_function
from emr_serverless_job.model import Weights

# A seed no other test uses, so no worker of the session has built this model before.
UNSEEN = "random:904117"


def photos(spark, count: int):
    def jpeg(shade: int) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (40, 30), (shade, 255 - shade, 90)).save(out, "JPEG")
        return out.getvalue()

    contents = [jpeg(shade) for shade in range(count)]
    rows = [(f"/p/Apple/{i}.jpg", len(data), data) for i, data in enumerate(contents)]
    return spark.createDataFrame(rows, "path string, length long, content binary").repartition(2)


def test_the_pass_builds_no_model_the_warm_up_built(spark, capfd):
    """Spark keeps SQL and RDD Python workers apart: a warm-up that warmed the wrong kind
    would leave the pass to build its models again, and ``models_built`` would grow."""
    spec = FeaturizerSpec(image_size=96, weights=Weights.parse(UNSEEN), batch_size=8)
    counters = Counters.create(spark)
    warming = warm.start(spark, spec, counters)
    warming.wait()
    built = counters.models_built.value
    assert 1 <= built <= 2 and len(warming.outcome["workers"]) == built  # local[2]
    rows = photos(spark, 24).mapInArrow(make_function(spec, counters), RESULT_SCHEMA).collect()
    assert len(rows) == 24 and all(row["error"] is None for row in rows)
    assert counters.images.value == 24
    assert counters.models_built.value == built
    assert '"message": "workers_warmed"' in capfd.readouterr().err


def test_a_warm_up_that_fails_fails_nothing_and_says_why(spark, capfd):
    """The pass meets the same model and reports its error where a run reports errors: the
    warm-up only logs it, and waiting for it returns."""
    spec = FeaturizerSpec(
        image_size=96,
        weights=Weights.parse(UNSEEN),
        batch_size=8,
        runtime="onnx",
        model_file="no-such-model.onnx",
    )
    counters = Counters.create(spark)
    warming = warm.start(spark, spec, counters)
    warming.wait()
    assert "no-such-model.onnx" in str(warming.outcome["error"])
    assert counters.models_built.value == 0
    assert '"message": "workers_warm_failed"' in capfd.readouterr().err
