"""Deterministic labelled image sets, so the demo, tests and benchmark need no download.

Each class is a fruit-like blob of its own hue on white (``emr_serverless_job.fruit_blobs``,
which the job ships for its preflight), in Fruits-360's layout (one folder per label).
``write_awkward_inputs`` adds what real uploads contain: grayscale, palette, RGBA and CMYK
files, EXIF rotation, upper-case suffixes, and files that cannot be decoded at all.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from emr_serverless_job.fruit_blobs import CLASSES, fruit_image


@dataclass(frozen=True)
class Expected:
    """What a job run over the written folder must report."""

    images: int
    broken: int


def write_image_set(
    folder: Path, per_class: int, classes: tuple[str, ...] = CLASSES, size: int = 100
) -> int:
    """``folder/<label>/<i>_100.jpg`` for every class; returns the number written."""
    for label in classes:
        target = folder / label
        target.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            fruit_image(label, index, size).save(target / f"{index}_{size}.jpg", quality=90)
    return per_class * len(classes)


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    fruit_image("Banana", 999).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    return data[: len(data) // 2]


def write_awkward_inputs(folder: Path) -> Expected:
    """Real-world oddities under ``folder/Mixed``; returns how many should featurize/fail."""
    target = folder / "Mixed"
    target.mkdir(parents=True, exist_ok=True)
    rgb = fruit_image("Kiwi", 1, 120)
    rgb.convert("L").save(target / "gray.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(target / "palette.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(target / "alpha.PNG")
    rgb.convert("CMYK").save(target / "cmyk.JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the viewer must turn it 90 degrees
    fruit_image("Kiwi", 2, 100).crop((0, 0, 100, 60)).save(target / "rotated.jpg", exif=exif)
    (target / "empty.jpg").write_bytes(b"")
    (target / "truncated.jpg").write_bytes(truncated_jpeg())
    (target / "not-an-image.png").write_bytes(b"this is a text file, not a PNG\n")
    (target / "notes.txt").write_text("ignored: not an image suffix\n")
    return Expected(images=8, broken=3)
