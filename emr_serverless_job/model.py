"""MobileNetV2 without its top, as a function from preprocessed batches to 1280-d features.

Two runtimes compute the same function: ONNX Runtime on a model exported from Keras by
fruits_build/ (the default: about twice as fast on CPU, and no TensorFlow in the archive), and
TensorFlow/Keras from a weights file (the source of the model, and the fallback). Both are
imported lazily: the driver and the tests of the pure pieces never pay their import time,
and each Spark Python worker pays it once.
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
RANDOM_PREFIX = "random:"
# Precision of the features a model computes: Keras and an fp32 export agree to 1e-4 and
# are interchangeable; an int8 export is a different (if close) function.
FP32 = "fp32"
INT8 = "int8"
PRECISIONS = (FP32, INT8)

# The exported model's input, and the metadata fruits_build/ writes into every .onnx file so
# that a run can tell which weights and image size it was made from.
ONNX_INPUT = "images"
META_IMAGE_SIZE = "image_size"
META_WEIGHTS_SOURCE = "weights_source"
META_WEIGHTS_SHA256 = "weights_sha256"
META_PRECISION = "precision"
META_CALIBRATION = "calibration_sha256"  # int8: fingerprint of the calibration photos
# ONNX Runtime is given at most this many pixels per call (10 photos at 224 px, 32 at 128 px)
# and each call's slice is preprocessed just before it, most likely keeping a call's
# activations in the CPU's caches (not measured). On this session's Intel machine, one thread
# beside another worker, 64 photos a call took 3.85 ms a photo at 224 px and 8 took 3.57; in
# 5,000-photo backfills with 8 a call the featurize stage went from 280-283 to 293-296
# photos/s (BENCHMARKS.md, "Garbage collector and photos per model call"; on an AMD machine an
# earlier try was inconclusive). At 128 px, 32 and 64 a call were alike and 8 slower: hence a
# budget of pixels, not of photos.
MODEL_PIXELS_PER_CALL = 1 << 19

WeightsKind = Literal["imagenet", "file", "random"]


@dataclass(frozen=True)
class Weights:
    """Where the network's weights come from, as given by ``--weights``."""

    kind: WeightsKind
    location: str = ""
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> Weights:
        """``--weights`` as given; a ValueError's message is written to follow the flag's name
        (``config._weights`` adds it). A file is not looked for here: it may be remote."""
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


class ModelError(ValueError):
    """The model file cannot be used by this job (wrong shape, unreadable, mismatched)."""


@dataclass(frozen=True)
class OnnxModelInfo:
    """What an exported model says about itself."""

    image_size: int
    weights_source: str  # e.g. "imagenet", a weights file name, "random:0"
    weights_sha256: str | None  # of the Keras weights it was exported from
    precision: str = FP32
    calibration_sha256: str | None = None

    @property
    def is_random(self) -> bool:
        return self.weights_source.startswith(RANDOM_PREFIX)


def onnx_session(path: str | Path, threads: int, optimized: bool = True) -> object:
    """An ONNX Runtime session sized like a Spark task: ``threads`` cores, one op at a time.

    ``optimized=False`` runs the graph as written, operator by operator: an int8 (QDQ) model's
    QuantizeLinear/DequantizeLinear pairs around fp32 convolutions instead of the fused int8
    kernels this CPU has (the preflight's reference for those kernels)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimized
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_onnx_model(path: str | Path) -> OnnxModelInfo:
    """Check the model computes (n, s, s, 3) -> (n, 1280) and read its export metadata."""
    try:
        session = onnx_session(path, 1)
    except Exception as error:
        raise ModelError(f"not a readable ONNX model: {error}") from error
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape if len(inputs) == 1 else None
    if (
        shape is None
        or len(shape) != 4
        or not isinstance(shape[1], int)
        or shape[1] != shape[2]
        or shape[3] != 3
    ):
        raise ModelError(f"expected one input of shape (n, size, size, 3), found {shape}")
    if len(outputs) != 1 or outputs[0].shape[-1] != FEATURE_DIM:
        found = [o.shape for o in outputs]
        raise ModelError(f"expected one output of {FEATURE_DIM} features, found {found}")
    meta = session.get_modelmeta().custom_metadata_map
    return OnnxModelInfo(
        image_size=shape[1],
        weights_source=meta.get(META_WEIGHTS_SOURCE, "unknown (no export metadata)"),
        weights_sha256=meta.get(META_WEIGHTS_SHA256) or None,
        precision=meta.get(META_PRECISION, FP32),
        calibration_sha256=meta.get(META_CALIBRATION) or None,
    )


def onnx_featurizer(
    path: str | Path, threads: int = 1, optimized: bool = True
) -> Callable[[np.ndarray], np.ndarray]:
    """One inference session for this process; reused for every batch it is given."""
    session = onnx_session(path, threads, optimized)
    (model_input,) = session.get_inputs()
    name, size = model_input.name, model_input.shape[1]

    def featurize(batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return np.empty((0, FEATURE_DIM), dtype=np.float32)
        feed = np.ascontiguousarray(batch, dtype=np.float32)
        return session.run(None, {name: feed})[0]

    # Let ONNX Runtime allocate and plan once now, not on the first real batch.
    featurize(np.zeros((1, size, size, 3), dtype=np.float32))
    return featurize


def images_per_call(runtime: str, image_size: int, batch_size: int) -> int:
    """How many photos of an Arrow batch go to the model at once: ONNX Runtime's share of
    ``MODEL_PIXELS_PER_CALL``; TensorFlow the whole batch, as before (slicing it not measured)."""
    if runtime != "onnx":
        return batch_size
    return max(1, min(batch_size, MODEL_PIXELS_PER_CALL // image_size**2))
