"""Export the Keras MobileNetV2 featurizer to ONNX, and refuse to ship it unless it matches.

The model is built exactly as the TensorFlow runtime builds it (no top, average pooling,
the given weights and image size), converted with tf2onnx, stamped with the weights it came
from, and then run by ONNX Runtime and by Keras on the same real photos: a max abs
difference above the tolerance fails the build, saying by how much.

    python packaging/export_onnx.py --weights FILE --image-size 224 --out model.onnx \\
        --parity-images ../shared/data/fruits-sample
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emr_serverless_job.images import decode_batch, is_image_path, preprocess  # noqa: E402
from emr_serverless_job.model import (  # noqa: E402
    META_IMAGE_SIZE,
    META_WEIGHTS_SHA256,
    META_WEIGHTS_SOURCE,
    ONNX_INPUT,
    Weights,
    build_keras_model,
    file_sha256,
    onnx_featurizer,
    tensorflow_featurizer,
)

OPSET = 17
PARITY_TOLERANCE = 1e-4
PARITY_BATCH = 32


class ParityError(RuntimeError):
    """ONNX Runtime and Keras disagree beyond the tolerance: the model must not ship."""


@dataclass(frozen=True)
class Export:
    path: Path
    image_size: int
    weights_source: str
    weights_sha256: str | None
    opset: int
    parity_max_abs_diff: float
    parity_images: int


def _weights_identity(weights: Weights) -> tuple[str, str | None]:
    if weights.kind == "file":
        return Path(weights.location).name, file_sha256(weights.location)
    return weights.describe(), None


def convert(weights: Weights, image_size: int, out: Path, opset: int = OPSET) -> None:
    """Keras model -> ONNX file with a dynamic batch and the export metadata."""
    import tensorflow as tf
    import tf2onnx

    model = build_keras_model(image_size, weights)
    signature = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=ONNX_INPUT)]
    function = tf.function(lambda images: model(images, training=False))
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=opset)
    source, sha = _weights_identity(weights)
    metadata = {META_IMAGE_SIZE: str(image_size), META_WEIGHTS_SOURCE: source}
    if sha:
        metadata[META_WEIGHTS_SHA256] = sha
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "fruits-features packaging/export_onnx.py"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(proto.SerializeToString())


def parity_batch(folder: Path, image_size: int, limit: int = PARITY_BATCH) -> np.ndarray:
    """Up to ``limit`` decodable photos under ``folder``, preprocessed as the job does."""
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p.name))
    decoded = decode_batch([p.read_bytes() for p in paths[: limit * 2]], image_size)
    pixels = decoded.pixels[:limit]
    if len(pixels) == 0:
        raise ParityError(f"no decodable photos under {folder} to check the export against")
    return preprocess(pixels)


def check_parity(
    onnx_path: Path, weights: Weights, batch: np.ndarray, tolerance: float = PARITY_TOLERANCE
) -> float:
    """Max abs difference between ONNX Runtime and Keras; raises above ``tolerance``."""
    keras_features = tensorflow_featurizer(batch.shape[1], weights)(batch)
    onnx_features = onnx_featurizer(onnx_path)(batch)
    worst = float(np.abs(onnx_features - keras_features).max())
    if not worst <= tolerance:
        raise ParityError(
            f"ONNX export differs from Keras by {worst:.3g} (max abs over {len(batch)} photos, "
            f"{batch.shape[1]} px); the tolerance is {tolerance:g}: not shipping {onnx_path}"
        )
    return worst


def export(
    weights: Weights, image_size: int, out: Path, parity_images: Path, opset: int = OPSET
) -> Export:
    if not parity_images.is_dir():
        raise ParityError(
            f"--parity-images: no folder at {parity_images}; give real photos to check the export"
        )
    convert(weights, image_size, out, opset)
    batch = parity_batch(parity_images, image_size)
    worst = check_parity(out, weights, batch)
    source, sha = _weights_identity(weights)
    return Export(out, image_size, source, sha, opset, worst, len(batch))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a weights file, or random:SEED")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parity-images", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        result = export(Weights.parse(args.weights), args.image_size, args.out, args.parity_images)
    except ParityError as error:
        args.out.unlink(missing_ok=True)
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"{result.path}: {result.image_size} px, opset {result.opset}, parity max abs diff "
        f"{result.parity_max_abs_diff:.2g} over {result.parity_images} photos"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
