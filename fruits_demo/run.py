"""``python -m fruits_demo`` (``./dev run``): the whole job on a generated image set, offline.

Generates a small deterministic labelled set (with a few broken files), runs the job
exactly as the CLI does, then draws the plots. Uses real ImageNet weights where a
weights file is available (``--weights``, ``$FRUITS_WEIGHTS`` or the shared models
folder beside the checkout) and otherwise ``random:0``, with a warning that says so.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from emr_serverless_job import main as job_main
from fruits_contract import cli as convention
from fruits_contract import logs
from fruits_demo.image_sets import write_awkward_inputs, write_image_set
from fruits_readers import plots

SHARED_WEIGHTS = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "models"
    / "mobilenet_v2_1.0_224_imagenet_no_top.h5"
)
PER_CLASS = 20
FALLBACK_WEIGHTS = "random:0"


def pick_weights(requested: str | None) -> str:
    """The demo's ``--weights``: as asked, else the first weights file found, else random ones,
    said loudly, so the demo still runs offline and nobody takes its features for real."""
    if requested:
        return requested
    for candidate in (os.environ.get("FRUITS_WEIGHTS"), str(SHARED_WEIGHTS)):
        if candidate and Path(candidate).is_file():
            return candidate
    convention.say(
        f"NO WEIGHTS FILE FOUND ({SHARED_WEIGHTS} or $FRUITS_WEIGHTS): running with "
        f"{FALLBACK_WEIGHTS}; the pipeline works, the features mean nothing",
        logs.WARNING,
    )
    return FALLBACK_WEIGHTS


def main(argv: list[str] | None = None) -> int:
    parser = convention.parser("python -m fruits_demo (./dev run)", __doc__, "the job's run failed")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("build/demo"),
        help="the demo's folder: images/, output/ (the job's --output) and the plots (replaced)",
    )
    parser.add_argument(
        "--weights",
        help="weights for the run (default: $FRUITS_WEIGHTS, else the shared models folder's "
        "ImageNet file, else random:0)",
    )
    parser.add_argument("--image-size", default="224", help="the job's --image-size")
    args = parser.parse_args(argv)

    images, output = args.workdir / "images", args.workdir / "output"
    shutil.rmtree(args.workdir, ignore_errors=True)
    count = write_image_set(images, PER_CLASS)
    awkward = write_awkward_inputs(images)
    convention.say(
        f"wrote {count + awkward.images} images ({awkward.broken} deliberately broken) to {images}"
    )
    status = job_main.main(
        [
            "--input",
            str(images),
            "--output",
            str(output),
            "--weights",
            pick_weights(args.weights),
            "--image-size",
            args.image_size,
        ]
    )
    if status != 0:
        return status
    for path in plots.write_plots(output):
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
