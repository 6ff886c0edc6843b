"""Export the Keras MobileNetV2 featurizer to ONNX, and refuse to ship it unless it matches.

The model is built exactly as the TensorFlow runtime builds it (no top, average pooling,
the given weights and image size), converted with tf2onnx, stamped with the weights it came
from, and then run by ONNX Runtime and by Keras on the same real photos: a max abs
difference above the tolerance fails the build, saying by how much.

``--precision int8`` then quantizes that checked fp32 model (static, QDQ: per-channel int8
weights, 7-bit where a convolution's input is signed, uint8 activations with ranges
calibrated on ``--calibration-images``) and ships it only if every parity photo's int8
features stay within a cosine of ``INT8_MIN_COSINE`` of the fp32 ones. The model records its
precision and the calibration photos' fingerprint.

    python -m fruits_build.export_onnx --weights FILE --image-size 224 --model model.onnx \\
        --parity-images ../shared/data/fruits-sample [--precision int8|fp32 \\
        --calibration-images DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from emr_serverless_job.config import DEFAULT_IMAGE_SIZE
from emr_serverless_job.images import decode_batch, preprocess
from emr_serverless_job.model import (
    FP32,
    INT8,
    META_CALIBRATION,
    META_IMAGE_SIZE,
    META_PRECISION,
    META_WEIGHTS_SHA256,
    META_WEIGHTS_SOURCE,
    ONNX_INPUT,
    PRECISIONS,
    Weights,
    build_keras_model,
    file_sha256,
    onnx_featurizer,
    tensorflow_featurizer,
)
from fruits_contract import IMAGE_SIZES, INT8_MIN_COSINE, is_image_name
from fruits_contract import cli as convention

OPSET = 17
PARITY_TOLERANCE = 1e-4
PARITY_BATCH = 32
# int8 against fp32 on the parity photos, per image, at least fruits_contract.INT8_MIN_COSINE.
# Measured on the 100 Fruits-360 sample photos with the ImageNet weights on an AVX2 CPU without
# VNNI, where int8 kernels are least exact: min 0.986 at 128 and 224 px (BENCHMARKS.md).
# Activations that come out of these are >= 0, so their uint8 zero point is 0.
RECTIFIERS = ("Relu", "Clip")
CALIBRATION_LIMIT = 500  # photos: MinMax ranges settle long before; memory stays < 1 GiB
CALIBRATION_BATCH = 16


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
    precision: str = FP32
    calibration_sha256: str | None = None
    calibration_images: int = 0
    int8_min_cosine: float | None = None
    int8_mean_cosine: float | None = None
    int8_seven_bit_convs: int = 0


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
    metadata[META_PRECISION] = FP32
    stamp(proto, metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(proto.SerializeToString())


def stamp(proto: object, metadata: dict[str, str]) -> None:
    """Set (or replace) the export metadata a run reads back with ``read_onnx_model``."""
    kept = [(e.key, e.value) for e in proto.metadata_props if e.key not in metadata]
    del proto.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "fruits-features fruits_build/export_onnx.py"


def photo_paths(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p.name))


def parity_batch(folder: Path, image_size: int, limit: int = PARITY_BATCH) -> np.ndarray:
    """Up to ``limit`` decodable photos under ``folder``, preprocessed as the job does."""
    decoded = decode_batch([p.read_bytes() for p in photo_paths(folder)[: limit * 2]], image_size)
    pixels = decoded.pixels[:limit]
    if len(pixels) == 0:
        raise ParityError(f"no decodable photos under {folder} to check the export against")
    return preprocess(pixels)


def evenly(items: list[Path], count: int) -> list[Path]:
    """At most ``count`` of ``items`` spread evenly over the whole list (in its order): the
    first ``count`` in path order would calibrate on the labels that sort first."""
    if len(items) <= count:
        return items
    return [items[i * len(items) // count] for i in range(count)]


def calibration_set(
    folder: Path, image_size: int, limit: int = CALIBRATION_LIMIT
) -> tuple[np.ndarray, str]:
    """The calibration photos, preprocessed, and their fingerprint: sha256 over each used
    photo's path (relative to ``folder``) and content, so the same set gives the same id."""
    digest = hashlib.sha256()
    paths = evenly(photo_paths(folder), limit * 2)  # room for broken ones, as parity_batch allows
    contents = [path.read_bytes() for path in paths]
    names = [path.relative_to(folder).as_posix() for path in paths]
    decoded = decode_batch(contents, image_size)
    used = decoded.ok_rows[:limit]
    if not used:
        raise ParityError(f"--calibration-images: no decodable photos under {folder}")
    for row in used:
        digest.update(names[row].encode() + b"\0" + hashlib.sha256(contents[row]).digest())
    return preprocess(decoded.pixels[:limit]), digest.hexdigest()


def _calibration_reader(batch: np.ndarray) -> object:
    """The calibration photos as ``quantize_static`` reads them, ``CALIBRATION_BATCH`` at a
    time, for one pass only; built in here because its base class needs onnxruntime, which
    is imported only to quantize."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.chunks: Iterator[np.ndarray] = (
                batch[start : start + CALIBRATION_BATCH]
                for start in range(0, len(batch), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = next(self.chunks, None)
            return None if chunk is None else {ONNX_INPUT: chunk}

    return Reader()


def signed_input_convs(graph: object) -> list[str]:
    """Weight names of the convolutions whose input can be negative: the image itself, the
    residual stream, the linear bottleneck outputs (everything not straight after a ReLU).

    Their uint8 activations sit around a mid-range zero point, so values near 255 are
    common. x86 CPUs without VNNI multiply uint8 by int8 with ``vpmaddubsw``, which adds
    two products into a saturating int16: 2 x 255 x 127 overflows it, 2 x 255 x 63 does not.
    Quantizing these weights to 7 bits keeps the sums exact on every CPU; the others stay
    8-bit. Measured on MobileNetV2 (AVX2, 128 px): 8-bit everywhere gave a worst cosine to
    fp32 of 0.71, 7-bit everywhere 0.82, 7-bit only here 0.986 at the same speed.
    """
    producers = {output: node for node in graph.node for output in node.output}
    chosen = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        producer = producers.get(node.input[0])
        if producer is None or producer.op_type not in RECTIFIERS:
            chosen.append(node.input[1])
    return chosen


def quantize(fp32: Path, out: Path, calibration: np.ndarray, fingerprint: str) -> int:
    """Static int8 quantization of a checked fp32 export (QDQ, per-channel weights, 7-bit
    where ``signed_input_convs`` says); returns how many convolutions got 7-bit weights."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        seven_bit = signed_input_convs(onnx.load(str(prepared)).graph)
        quantize_static(
            str(prepared),
            str(out),
            _calibration_reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "TensorQuantOverrides": {
                    weight: [{"reduce_range": True, "axis": 0}] for weight in seven_bit
                }
            },
        )
    source = {e.key: e.value for e in onnx.load(str(fp32), load_external_data=False).metadata_props}
    proto = onnx.load(str(out))
    stamp(proto, {**source, META_PRECISION: INT8, META_CALIBRATION: fingerprint})
    onnx.save(proto, str(out))
    return len(seven_bit)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity of two (n, d) feature matrices."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(axis=1) / np.where(norms > 0, norms, 1.0)


def check_int8(
    int8: Path, fp32: Path, batch: np.ndarray, minimum: float = INT8_MIN_COSINE
) -> tuple[float, float]:
    """(min, mean) per-image cosine of int8 to fp32 features; raises below ``minimum``."""
    similar = cosines(onnx_featurizer(int8)(batch), onnx_featurizer(fp32)(batch))
    worst = float(similar.min())
    if not worst >= minimum:
        raise ParityError(
            f"int8 model's features differ from fp32: cosine {worst:.4f} on the worst of "
            f"{len(batch)} parity photos ({batch.shape[1]} px), the minimum is {minimum}; "
            f"calibrate on more photos like yours, or ship --precision fp32: not shipping {int8}"
        )
    return worst, float(similar.mean())


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
    weights: Weights,
    image_size: int,
    out: Path,
    parity_images: Path,
    opset: int = OPSET,
    precision: str = FP32,
    calibration_images: Path | None = None,
    int8_min_cosine: float = INT8_MIN_COSINE,
) -> Export:
    """The checked model at ``out``; on any failed check nothing is left there."""
    if precision not in PRECISIONS:
        raise ParityError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    for flag, folder in (
        ("--parity-images", parity_images),
        ("--calibration-images", calibration_images),
    ):
        if folder is not None and not folder.is_dir():
            raise ParityError(f"{flag}: no folder at {folder}; give real photos")
    source, sha = _weights_identity(weights)
    batch = parity_batch(parity_images, image_size)
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = out if precision == FP32 else Path(scratch) / "fp32.onnx"
        convert(weights, image_size, fp32, opset)
        worst = check_parity(fp32, weights, batch)
        result = Export(out, image_size, source, sha, opset, worst, len(batch))
        if precision == FP32:
            return result
        calibration, fingerprint = calibration_set(calibration_images or parity_images, image_size)
        out.parent.mkdir(parents=True, exist_ok=True)
        seven_bit = quantize(fp32, out, calibration, fingerprint)
        try:
            low, mean = check_int8(out, fp32, batch, int8_min_cosine)
        except ParityError:
            out.unlink(missing_ok=True)
            raise
    return replace(
        result,
        precision=INT8,
        calibration_sha256=fingerprint,
        calibration_images=len(calibration),
        int8_min_cosine=low,
        int8_mean_cosine=mean,
        int8_seven_bit_convs=seven_bit,
    )


def weights_problems(flag: str, value: str) -> list[str]:
    """Why ``value`` names no weights to export from (a bad spec, a file that is not there),
    named after ``flag``; the build's refusal and this command's are the same."""
    try:
        weights = Weights.parse(value)
    except ValueError as error:
        return [convention.flag_error(flag, value, error)]
    if weights.kind == "file" and not Path(weights.location).expanduser().is_file():
        return [convention.flag_error(flag, value, "no such file")]
    return []


def flag_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the flags, every problem at once, before TensorFlow is imported."""
    problems = weights_problems("--weights", args.weights)
    for flag, folder in (
        ("--parity-images", args.parity_images),
        ("--calibration-images", args.calibration_images),
    ):
        if folder is not None and not folder.is_dir():
            problems.append(convention.flag_error(flag, folder, "no such folder"))
    return problems


def build_parser() -> argparse.ArgumentParser:
    """The command line of an export by hand, at another size or precision (``./dev package``
    calls ``export`` itself)."""
    parser = convention.parser(
        "python -m fruits_build.export_onnx",
        __doc__.splitlines()[0] + " ./dev package runs this as part of fruits_build.build.",
        failed="the exported model does not match Keras, or int8 falls below its cosine floor "
        "(nothing is left at --model)",
    )
    parser.add_argument(
        "--weights", required=True, help="the Keras weights file (.h5), or random:SEED (tests)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=DEFAULT_IMAGE_SIZE,
        choices=IMAGE_SIZES,
        help="the side of the network's input in pixels",
    )
    parser.add_argument("--model", type=Path, required=True, help="the .onnx file written")
    parser.add_argument(
        "--parity-images",
        type=Path,
        required=True,
        help="a folder of photos both runtimes featurize; the model ships only if they agree",
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=INT8, help="of the model's arithmetic"
    )
    parser.add_argument(
        "--calibration-images",
        type=Path,
        default=None,
        help="int8: photos whose activations set the ranges (default: --parity-images); "
        "a few hundred of your own photos",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = flag_problems(args)
    if problems:
        return convention.refuse("; ".join(problems))
    try:
        result = export(
            Weights.parse(args.weights),
            args.image_size,
            args.model,
            args.parity_images,
            precision=args.precision,
            calibration_images=args.calibration_images,
        )
    except ParityError as error:
        args.model.unlink(missing_ok=True)
        print(f"error: {error}", file=sys.stderr)
        return convention.EXIT_FAILED
    print(
        f"{result.path}: {result.image_size} px, opset {result.opset}, parity max abs diff "
        f"{result.parity_max_abs_diff:.2g} over {result.parity_images} photos"
    )
    if result.precision == INT8:
        print(
            f"int8 from {result.calibration_images} calibration photos "
            f"({result.calibration_sha256[:16]}): cosine to fp32 min "
            f"{result.int8_min_cosine:.4f}, mean {result.int8_mean_cosine:.4f}"
        )
    return convention.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
