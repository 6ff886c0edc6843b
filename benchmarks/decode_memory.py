"""Peak memory of decoding the worst photos the job accepts, one fresh process per input.

    .venv/bin/python benchmarks/decode_memory.py [--size 224] [--json out.json]

Each input is built here at the limits ``images.check_dimensions`` admits (50 MP, the
largest side, the widest aspect ratio) in the modes that cost most once decoded (RGBA,
16-bit grayscale, palette with transparency, CMYK JPEG, progressive JPEG, WebP), plus
inputs just past the limits, which must be refused from the header. A child process
decodes one input with ``images.decode_batch`` (what a Python worker runs) and reports its
own peak RSS (``VmHWM``) after subtracting its RSS before decoding, so the figure is what one
Python worker adds to its baseline (the model and pyarrow are not loaded here).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emr_serverless_job.images import (
    MAX_ASPECT_RATIO,
    MAX_PIXELS,
    MAX_PIXELS_BY_FORMAT,
    MAX_SIDE,
)

SQUARE = math.isqrt(MAX_PIXELS)  # the largest square photo admitted
WEBP_SIDE = math.isqrt(MAX_PIXELS_BY_FORMAT["WEBP"])
WIDE = (MAX_SIDE, math.ceil(MAX_SIDE / MAX_ASPECT_RATIO))  # the widest photo admitted


def _noise(size: tuple[int, int], channels: int, dtype: type = np.uint8) -> np.ndarray:
    """Incompressible-ish pixels in stripes, cheap to make at 50 MP."""
    width, height = size
    row = np.random.default_rng(0).integers(0, 255, (1, width, channels), dtype=np.uint8)
    return np.repeat(row, height, axis=0).astype(dtype).squeeze()


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _rgba_png() -> bytes:
    return _encode(Image.fromarray(_noise((SQUARE, SQUARE), 4), "RGBA"), "PNG", compress_level=1)


def _gray16_png() -> bytes:
    pixels = _noise((SQUARE, SQUARE), 1, np.uint16) * 200
    return _encode(Image.fromarray(pixels), "PNG", compress_level=1)


def _palette_png() -> bytes:
    image = Image.fromarray(_noise((SQUARE, SQUARE), 3), "RGB").quantize(64)
    return _encode(image, "PNG", transparency=0, compress_level=1)


def _cmyk_jpeg() -> bytes:
    rgb = Image.fromarray(_noise((SQUARE, SQUARE), 3), "RGB")
    return _encode(rgb.convert("CMYK"), "JPEG", quality=90)


def _progressive_jpeg() -> bytes:
    rgb = Image.fromarray(_noise((SQUARE, SQUARE), 3), "RGB")
    return _encode(rgb, "JPEG", quality=95, progressive=True)


def _wide_png() -> bytes:
    return _encode(Image.fromarray(_noise(WIDE, 4), "RGBA"), "PNG", compress_level=1)


def _webp() -> bytes:
    return _encode(Image.fromarray(_noise((WEBP_SIDE, WEBP_SIDE), 4), "RGBA"), "WEBP", quality=50)


def _strip_png() -> bytes:
    """Past the limits: a 1 x 89,000,000 PNG of a few hundred KB (Pillow's guard admits it)."""
    return _encode(Image.new("L", (89_000_000, 1)), "PNG", compress_level=9)


INPUTS: dict[str, Callable[[], bytes]] = {
    f"RGBA PNG {SQUARE}x{SQUARE}": _rgba_png,
    f"16-bit gray PNG {SQUARE}x{SQUARE}": _gray16_png,
    f"palette PNG with transparency {SQUARE}x{SQUARE}": _palette_png,
    f"CMYK JPEG {SQUARE}x{SQUARE}": _cmyk_jpeg,
    f"progressive JPEG {SQUARE}x{SQUARE}": _progressive_jpeg,
    f"RGBA PNG {WIDE[0]}x{WIDE[1]} (widest admitted)": _wide_png,
    f"RGBA WebP {WEBP_SIDE}x{WEBP_SIDE}": _webp,
    "gray PNG 89000000x1 (refused)": _strip_png,
}

CHILD = """
import sys, resource
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from emr_serverless_job.images import decode_batch
data = Path(sys.argv[1]).read_bytes()
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
before = rss("VmRSS:")
batch = decode_batch([data], int(sys.argv[2]))
print(before, rss("VmHWM:"), batch.errors[0] or "")
"""


def measure(data: bytes, size: int) -> tuple[int, str]:
    """(bytes one decode adds to a fresh process's peak RSS, error reason or "")."""
    root = str(Path(__file__).resolve().parents[1])
    with tempfile.NamedTemporaryFile() as file:
        file.write(data)
        file.flush()
        out = subprocess.run(
            [sys.executable, "-c", CHILD, file.name, str(size), root],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split(maxsplit=2)
    return int(out[1]) - int(out[0]), (out[2].strip() if len(out) > 2 else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="network input size (default 224)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = []
    print(f"{'input':<48} {'file MB':>8} {'peak MiB':>9}  outcome")
    for name, build in INPUTS.items():
        data = build()
        peak, error = measure(data, args.size)
        results.append({"input": name, "bytes": len(data), "peak_bytes": peak, "error": error})
        outcome = error or "decoded"
        print(f"{name:<48} {len(data) / 1e6:>8.1f} {peak / 2**20:>9.0f}  {outcome}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
