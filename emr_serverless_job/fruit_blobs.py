"""A deterministic fruit-like photo, drawn in memory, so that nothing needs a download.

Each label is a noisy blob of its own hue on white, at a varying position and scale. The
preflight decodes a few of them on EMR (``preflight.probe_batch``: the model's features on the
job's own CPUs), the build checks the ONNX export on them when given no photos of yours, and
the demo and the tests write whole image sets of them (``fruits_demo.image_sets``).
"""

from __future__ import annotations

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
