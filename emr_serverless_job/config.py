"""The job's configuration: one typed object, built in one place from command-line flags.

Everything that can be checked without touching storage is checked here, so a bad
flag stops the run before any Spark session, listing or write happens.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from emr_serverless_job.model import MODEL_PIXELS_PER_CALL, Weights
from emr_serverless_job.projection import DEFAULT_SCALING
from fruits_contract import (
    ERASE_FLAG,
    IMAGE_SIZES,
    INPUT_FLAG,
    MANIFEST_FLAG,
    MODEL_FILE,
    PCA_MODEL_FOLDER,
    PCA_SCALINGS,
    PREFLIGHT_FLAG,
    RUN_ID_PATTERN,
    RUNTIMES,
)
from fruits_contract import cli as convention

DEFAULT_IMAGE_SIZE = 224
DEFAULT_PCA_VARIANCE = 0.95
DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024
REMOTE_SCHEMES = ("s3://", "s3a://", "s3n://", "hdfs://", "file:")
# What `./dev package` builds and deploys (fruits_contract.MODEL_FILE in dist/): a local
# featurizing run without --model, --runtime or --weights uses it, as production does.
LOCAL_MODEL = Path(__file__).resolve().parents[1] / "dist" / MODEL_FILE
NO_LOCAL_MODEL = (
    "no --model given and no model built at {path}: build the deployed one with ./dev package "
    "(ONNX int8), or say which to use: --model FILE.onnx, or --runtime tensorflow --weights "
    "imagenet|FILE.h5|random:SEED"
)


class ConfigError(ValueError):
    """A flag is missing, malformed or contradicts another; raised before any side effect."""


@dataclass(frozen=True)
class JobConfig:
    """Everything one run needs; paths are absolute or URIs."""

    output: str
    input: str | None
    manifest: str | None
    runtime: str  # "onnx" or "tensorflow"
    model: str | None  # the exported .onnx (runtime onnx)
    weights: Weights  # runtime tensorflow
    image_size: int | None  # None: read from the ONNX model
    pca_variance: float
    pca_k: int | None
    pca_scaling: str  # backfills: "none" (centred PCA) or "standard" (scaled to unit variance)
    pca_model: str
    run_id: str | None
    batch_size: int
    max_file_bytes: int
    erase: str | None = None  # an erasure manifest: remove these photos' rows (erase.py)
    preflight: str | None = None  # check the deployment instead of featurizing (preflight.py)
    preflight_artifacts: str | None = None  # the uploaded artifacts.json
    preflight_reference: str | None = None  # an fp32 .onnx to compare the deployed model with
    compact: float | None = None  # merge batch partitions at least this many days old (compact.py)
    dry_run: bool = False  # with compact: report the plan, write nothing

    @property
    def is_backfill(self) -> bool:
        """A backfill (``--input``) fits the PCA model; a manifest run only applies it."""
        return self.input is not None


def normalize_location(location: str) -> str:
    """Make local paths absolute so run ids and reports do not depend on the working folder."""
    if location.startswith(REMOTE_SCHEMES):
        return location.rstrip("/")
    return str(Path(location).expanduser().resolve())


def build_parser() -> argparse.ArgumentParser:
    """The job's flags, group by group in the order --help lists them."""
    parser = convention.parser(
        "emr_serverless_job",
        "Turn fruit photos into MobileNetV2 features and PCA-reduced features in Parquet. "
        "Runs locally on local[*] (python -m emr_serverless_job, or the console script "
        "fruits-featurize) or on EMR Serverless through spark-submit.",
        "the run failed (inputs not all accounted for, an erase or a compaction incomplete, "
        "a preflight check failed)",
    )
    _add_source_flags(parser)
    _add_mode_flags(parser)
    _add_output_flag(parser)
    _add_model_flags(parser)
    _add_pca_flags(parser)
    _add_run_flags(parser)
    return parser


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    """What the run does is chosen by its one source flag, so exactly one is required."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        INPUT_FLAG,
        help="Folder or s3:// prefix read recursively for .jpg/.jpeg/.png (backfill: fits PCA).",
    )
    source.add_argument(
        MANIFEST_FLAG,
        help='JSON Lines file of {"uri": ...} objects listing the images of one incremental batch.',
    )
    source.add_argument(
        ERASE_FLAG,
        help='JSON Lines file of {"uri": ..., "erased_at": ISO-8601 UTC} objects: photos deleted '
        "from raw/, whose rows are removed from every features and errors partition "
        "(GDPR erasure; docs/erasure.md). The model flags are ignored.",
    )
    source.add_argument(
        PREFLIGHT_FLAG,
        help="Check this deployment in seconds instead of featurizing (preflight.py): the "
        "interpreter, imports and CPU of the driver and of each executor, one photo read from "
        "this folder or prefix (the first photo found) or this object, a marker written and "
        "deleted under --output, the model on the executors' CPUs; a report under "
        "OUTPUT/reports/preflight/RUN_ID/. Exit 1 names the first failed check.",
    )
    source.add_argument(
        "--compact",
        type=float,
        metavar="MIN_AGE_DAYS",
        help="Merge the features and errors partitions of batches whose newest file is at "
        "least this many days old into few files of at most 128 MiB (compact.py; "
        "docs/operating.md). Every reader answers the same after. The model flags are ignored.",
    )


def _add_mode_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that only a compaction or a preflight reads, listed right after their sources."""
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="With --compact: print the plan (partitions, files, bytes, rows before and "
        "after) and write nothing.",
    )
    parser.add_argument(
        "--preflight-artifacts",
        default=None,
        help="With --preflight: the uploaded artifacts.json, to compare what runs with what "
        "was built (checksums, interpreter, package versions, the build's int8 cosine; "
        "default: not compared).",
    )
    parser.add_argument(
        "--preflight-reference",
        default=None,
        help="With --preflight: an fp32 .onnx of the same weights; the deployed int8 model's "
        "features are compared with it on each executor's CPU (default: with itself, run "
        "operator by operator).",
    )


def _add_output_flag(parser: argparse.ArgumentParser) -> None:
    """Every run writes under one location, so it is required whatever the source."""
    parser.add_argument(
        "--output",
        required=True,
        help="The output location: folder or s3:// prefix under which tables and reports go.",
    )


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Which featurizer runs and at what input size (ignored by erase and compaction runs)."""
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=None,
        help="Featurizer runtime: 'onnx' (with --model; without any of --model, --runtime and "
        "--weights, the model ./dev package built in dist/, as deployed) or 'tensorflow' "
        "(the default when --weights is given).",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="Path or URI of the .onnx model fruits_build/ exported (runtime onnx); its input "
        "size is the image size (default: dist/ of this checkout, when no --runtime or "
        "--weights is given).",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help=(
            "MobileNetV2 weights for --runtime tensorflow (default 'imagenet', a Keras download "
            "that needs internet), a path or URI of a .h5 weights file, or 'random:SEED' "
            "(tests and offline demos only)."
        ),
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help=f"Square input size of the network, one of {', '.join(map(str, IMAGE_SIZES))} "
        f"(tensorflow: default {DEFAULT_IMAGE_SIZE}; onnx: the model's, which must match).",
    )


def _add_pca_flags(parser: argparse.ArgumentParser) -> None:
    """How many components the PCA keeps, how it scales, and where its model is saved."""
    pca = parser.add_mutually_exclusive_group()
    pca.add_argument(
        "--pca-variance",
        type=float,
        default=None,
        help=f"Keep the fewest components explaining this share of variance "
        f"(default {DEFAULT_PCA_VARIANCE}).",
    )
    pca.add_argument(
        "--pca-k",
        type=int,
        default=None,
        help="Keep exactly this many PCA components (default: chosen by --pca-variance).",
    )
    parser.add_argument(
        "--pca-scaling",
        choices=PCA_SCALINGS,
        default=DEFAULT_SCALING,
        help="Backfills: 'none' centres the features before PCA; 'standard' also "
        "scales each to unit variance first (the classic recipe: needs about twice the "
        "components for the same variance and separated held-out photos less well). A "
        "manifest run uses whatever the saved model records.",
    )
    parser.add_argument(
        "--pca-model",
        default=None,
        help=(
            "Where the fitted scaler+PCA is saved by a backfill and loaded by a manifest run "
            f"(default OUTPUT/{PCA_MODEL_FOLDER})."
        ),
    )


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The run's partition name and its tuning: batch size and the largest file read."""
    parser.add_argument(
        "--run-id",
        default=None,
        help="Output partition name (default: derived from the inputs, so that a rerun "
        "replaces its own partition).",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="Images per Arrow batch sent to the Python workers (ONNX Runtime takes each "
        f"batch in calls of at most {MODEL_PIXELS_PER_CALL:,} pixels; TensorFlow whole).",
    )
    parser.add_argument(
        "--max-file-bytes",
        type=int,
        default=DEFAULT_MAX_FILE_BYTES,
        help="Files larger than this are recorded as errors without being read.",
    )


def _require_local(
    location: str | None, flag: str, check: Callable[[Path], bool], kind: str
) -> None:
    """Local inputs are checked now; remote ones when the job first touches them."""
    if location is None or location.startswith(REMOTE_SCHEMES):
        return
    path = Path(location).expanduser()
    if not check(path):
        raise ConfigError(f"{flag}: no {kind} at {path.resolve()}")


def parse_args(argv: list[str] | None = None) -> JobConfig:
    """Parse and validate flags; a ConfigError names the offending flag."""
    args = build_parser().parse_args(argv)
    return config_from_args(args)


def _default_featurizer(args: argparse.Namespace) -> str | None:
    """A featurizing run told nothing of its model uses the one that deploys (the ONNX int8
    model ./dev package built), never a silent Keras download of ImageNet weights. Returns why
    it cannot, raised once every other flag has been checked (their errors come first)."""
    featurizes = args.input is not None or args.manifest is not None
    if not featurizes or args.model or args.runtime or args.weights:
        return None
    if not LOCAL_MODEL.is_file():
        return NO_LOCAL_MODEL.format(path=LOCAL_MODEL)
    args.model = str(LOCAL_MODEL)
    return None


def config_from_args(args: argparse.Namespace) -> JobConfig:
    """Check every flag in a fixed order (the first wrong one is named), then build the config."""
    no_model = _default_featurizer(args)
    args.weights = args.weights or "imagenet"
    runtime = _runtime(args)
    weights = _weights(args)
    image_size = _image_size(args, runtime)
    variance = _pca_variance(args)
    _check_run_flags(args)
    _check_sources(args)
    _check_mode_flags(args)
    if no_model:
        raise ConfigError(no_model)
    return _job_config(args, runtime, weights, image_size, variance)


def _runtime(args: argparse.Namespace) -> str:
    """The runtime, told or implied by --model, and the model file it needs (checked here)."""
    runtime = args.runtime or ("onnx" if args.model else "tensorflow")
    if runtime == "onnx" and not args.model:
        raise ConfigError("--runtime onnx: needs --model, the .onnx file fruits_build/ exported")
    if runtime == "tensorflow" and args.model:
        raise ConfigError("--model: only used with --runtime onnx (tensorflow takes --weights)")
    _require_local(args.model, "--model", Path.is_file, "file")
    return runtime


def _weights(args: argparse.Namespace) -> Weights:
    """The parsed --weights; a local weights file must exist and is made absolute."""
    try:
        weights = Weights.parse(args.weights)
    except ValueError as error:
        raise ConfigError(f"--weights: {error}") from error
    if weights.kind == "file" and not weights.location.startswith(REMOTE_SCHEMES):
        local = Path(weights.location).expanduser().resolve()
        if not local.is_file():
            raise ConfigError(f"--weights: no weights file at {local}")
        weights = Weights(kind="file", location=str(local))
    return weights


def _image_size(args: argparse.Namespace, runtime: str) -> int | None:
    """The network's input size: tensorflow's default, or None for ONNX (read from the model)."""
    image_size = args.image_size
    if image_size is None and runtime == "tensorflow":
        image_size = DEFAULT_IMAGE_SIZE
    if image_size is not None and image_size not in IMAGE_SIZES:
        raise ConfigError(
            f"--image-size: {args.image_size} is not one of {', '.join(map(str, IMAGE_SIZES))}"
        )
    return image_size


def _pca_variance(args: argparse.Namespace) -> float:
    """The share of variance to keep (its default when not given); --pca-k is checked too."""
    variance = DEFAULT_PCA_VARIANCE if args.pca_variance is None else args.pca_variance
    if not 0.0 < variance <= 1.0:
        raise ConfigError(f"--pca-variance: {variance} must be in (0, 1]")
    if args.pca_k is not None and not 1 <= args.pca_k <= 1280:
        raise ConfigError(f"--pca-k: {args.pca_k} must be between 1 and 1280")
    return variance


def _check_run_flags(args: argparse.Namespace) -> None:
    """Batch size, file size limit and run id are refused here, not half-way through a run."""
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: {args.batch_size} must be at least 1")
    if args.max_file_bytes < 1:
        raise ConfigError(f"--max-file-bytes: {args.max_file_bytes} must be at least 1")
    if args.run_id is not None and not RUN_ID_PATTERN.match(args.run_id):
        raise ConfigError(
            f"--run-id: {args.run_id!r} must be lowercase letters, digits, '-' or '_' "
            "(at most 63, starting with a letter or digit)"
        )


def _check_sources(args: argparse.Namespace) -> None:
    """A local --input, --manifest or --erase that is not there stops the run before Spark."""
    _require_local(args.input, "--input", Path.is_dir, "folder")
    _require_local(args.manifest, "--manifest", Path.is_file, "file")
    _require_local(args.erase, "--erase", Path.is_file, "file")


def _check_mode_flags(args: argparse.Namespace) -> None:
    """--compact's age, and the flags that mean something only with --compact or --preflight."""
    if args.compact is not None and not 0.0 <= args.compact < float("inf"):
        raise ConfigError(f"--compact: {args.compact} days must be 0 or more")
    if args.dry_run and args.compact is None:
        raise ConfigError("--dry-run: only used with --compact")
    for flag in ("preflight_artifacts", "preflight_reference"):
        if getattr(args, flag) is not None and args.preflight is None:
            raise ConfigError(f"--{flag.replace('_', '-')}: only used with --preflight")


def _job_config(
    args: argparse.Namespace,
    runtime: str,
    weights: Weights,
    image_size: int | None,
    variance: float,
) -> JobConfig:
    """The checked flags as one JobConfig, locations made absolute (see normalize_location)."""
    output = normalize_location(args.output)
    return JobConfig(
        output=output,
        input=normalize_location(args.input) if args.input is not None else None,
        manifest=normalize_location(args.manifest) if args.manifest is not None else None,
        runtime=runtime,
        model=normalize_location(args.model) if args.model else None,
        weights=weights,
        image_size=image_size,
        pca_variance=variance,
        pca_k=args.pca_k,
        pca_scaling=args.pca_scaling,
        pca_model=(
            normalize_location(args.pca_model) if args.pca_model else f"{output}/{PCA_MODEL_FOLDER}"
        ),
        run_id=args.run_id,
        batch_size=args.batch_size,
        max_file_bytes=args.max_file_bytes,
        erase=normalize_location(args.erase) if args.erase is not None else None,
        preflight=_optional_location(args.preflight),
        preflight_artifacts=_optional_location(args.preflight_artifacts),
        preflight_reference=_optional_location(args.preflight_reference),
        compact=args.compact,
        dry_run=args.dry_run,
    )


def _optional_location(location: str | None) -> str | None:
    """An optional flag's location made absolute; an empty or absent one stays None."""
    return normalize_location(location) if location else None
