"""MobileNetV2 without its top, as a function from preprocessed batches to 1280-d features.

TensorFlow is imported lazily: the driver, the Lambda and the tests of the pure
pieces never pay its import time, and each Spark Python worker pays it once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

FEATURE_DIM = 1280
IMAGE_SIZES = (96, 128, 160, 192, 224)
RANDOM_PREFIX = "random:"

WeightsKind = Literal["imagenet", "file", "random"]


@dataclass(frozen=True)
class Weights:
    """Where the network's weights come from, as given by ``--weights``."""

    kind: WeightsKind
    location: str = ""
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> Weights:
        spec = spec.strip()
        if not spec:
            raise ValueError("empty; use 'imagenet', a weights file, or 'random:SEED'")
        if spec == "imagenet":
            return cls(kind="imagenet")
        if spec.startswith(RANDOM_PREFIX):
            seed = spec[len(RANDOM_PREFIX) :]
            if not seed.isdigit():
                raise ValueError(f"{spec!r}: the seed after 'random:' must be a whole number")
            return cls(kind="random", seed=int(seed))
        if not spec.lower().endswith(".h5"):
            raise ValueError(f"{spec!r}: a weights file must be a Keras .h5 file")
        return cls(kind="file", location=spec)

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    def describe(self) -> str:
        if self.kind == "random":
            return f"{RANDOM_PREFIX}{self.seed}"
        return self.location or self.kind


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def configure_tensorflow_threads(threads: int) -> None:
    """Size TensorFlow's pools to the cores Spark gave this task, before TF starts.

    Spark already runs one task per core; letting each task's TensorFlow also spread
    over every core would oversubscribe the CPU and slow everything down.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TensorFlow already started in this process; its pools are already fixed.


def build_keras_model(image_size: int, weights: Weights, weights_path: str | None = None) -> object:
    """MobileNetV2, no top, global average pooling: (n, size, size, 3) -> (n, 1280).

    ``weights_path`` is where a ``file`` weights spec can be read on this machine
    (on a Spark worker, the copy Spark distributed), which may differ from its URI.
    """
    import keras

    if weights.kind == "random":
        keras.utils.set_random_seed(weights.seed)
        keras_weights: str | None = None
    elif weights.kind == "imagenet":
        keras_weights = "imagenet"
    else:
        keras_weights = weights_path or weights.location
    return keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3),
        include_top=False,
        weights=keras_weights,
        pooling="avg",
    )


def tensorflow_featurizer(
    image_size: int, weights: Weights, weights_path: str | None = None, threads: int = 1
) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled inference function; built once per process and reused for every batch."""
    configure_tensorflow_threads(threads)
    import tensorflow as tf

    model = build_keras_model(image_size, weights, weights_path)
    signature = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32)]
    infer = tf.function(lambda batch: model(batch, training=False), input_signature=signature)

    def featurize(batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return np.empty((0, FEATURE_DIM), dtype=np.float32)
        return infer(tf.convert_to_tensor(batch, dtype=tf.float32)).numpy()

    # Trace and optimise the graph now, so the first real batch is not seconds slower.
    featurize(np.zeros((1, image_size, image_size, 3), dtype=np.float32))
    return featurize
