"""A deterministic labelled image set, so the demo, tests and benchmark need no download.

Each class is a fruit-like blob of its own hue on white, in Fruits-360's layout
(one folder per label). ``write_awkward_inputs`` adds what real uploads contain:
grayscale, palette, RGBA and CMYK files, EXIF rotation, upper-case suffixes, and
files that cannot be decoded at all.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("Apple Braeburn", "Banana", "Cherry 3", "Kiwi", "Orange 2", "Pear Ø")
HUES = {
    "Apple Braeburn": (180, 30, 40),
    "Banana": (230, 210, 60),
    "Cherry 3": (120, 10, 30),
    "Kiwi": (120, 100, 50),
    "Orange 2": (245, 140, 20),
    "Pear Ø": (170, 200, 80),
}


@dataclass(frozen=True)
class Expected:
    """What a job run over the written folder must report."""

    images: int
    broken: int


def fruit_image(label: str, index: int, size: int = 100) -> Image.Image:
    """One RGB image: a noisy blob of the label's colour at a varying position and scale."""
    rng = np.random.default_rng(index * 7919 + sum(map(ord, label)))
    base = np.array(HUES.get(label, (128, 128, 128)), dtype=np.float64)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    radius = size * rng.uniform(0.25, 0.42)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
    colour = tuple(int(c) for c in np.clip(base + rng.normal(0, 12, 3), 0, 255))
    draw.ellipse((cx - radius, cy - radius * 1.1, cx + radius, cy + radius * 0.9), fill=colour)
    highlight = tuple(int(c) for c in np.clip(base + 60, 0, 255))
    draw.ellipse((cx - radius / 3, cy - radius / 2, cx, cy - radius / 5), fill=highlight)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-6, 7, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


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
