"""Image bytes to network input, or a reason why not.

Uploads are not curated: PNG with alpha, palette images, grayscale, CMYK JPEGs from
print workflows, phone photos rotated by EXIF, zero-byte and truncated files, and
now and then something that is not an image at all. Every input ends as either a
decoded array or an ``ImageError`` whose message goes into the error table.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Hadoop glob matching the suffixes above in any letter case (Spark's pathGlobFilter).
IMAGE_GLOB = "*.{[jJ][pP][gG],[jJ][pP][eE][gG],[pP][nN][gG]}"
# White, because Fruits-360 style photos are shot on white: transparent pixels become background.
BACKGROUND = (255, 255, 255)
EXIF_ORIENTATION = 0x0112
UPRIGHT = 1
ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # orientations that swap width and height


class ImageError(ValueError):
    """The bytes cannot become a network input; the message is the reason users see."""


@dataclass(frozen=True)
class DecodedBatch:
    """The decodable images of a batch, stacked, with per-input outcomes in input order."""

    pixels: np.ndarray  # (n_ok, size, size, 3) uint8
    ok_rows: list[int]  # input positions of the rows of ``pixels``
    widths: list[int | None]
    heights: list[int | None]
    errors: list[str | None]


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB, compositing transparency onto the white background."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping everything to white.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        return Image.fromarray((array / peak * 255.0).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes | None, size: int) -> tuple[np.ndarray, int, int]:
    """Decode, orient, convert to RGB and resize to ``size``x``size`` (uint8).

    Returns the pixels and the original width and height (after EXIF orientation).
    The resize squashes rather than crops, as Keras' ``load_img(target_size=...)`` does.
    Pillow's decompression-bomb guard stays on; its warning threshold is treated as an
    error so one huge upload cannot exhaust an executor's memory.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION, UPRIGHT)
            if orientation in ROTATING_ORIENTATIONS:
                width, height = height, width
            image.draft("RGB", (size, size))  # JPEG: decode at reduced scale when much larger
            if orientation == UPRIGHT:
                image.load()  # exif_transpose would copy the whole image for nothing
            else:
                image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"image too large (decompression bomb guard): {error}") from error
    except UnidentifiedImageError as error:
        raise ImageError("not a readable image (unknown or corrupt format)") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"corrupt or truncated image: {error}") from error
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8), width, height


def decode_batch(contents: Sequence[bytes | None], size: int) -> DecodedBatch:
    """Decode a batch, keeping per-row outcomes so no input can go missing."""
    pixels = np.empty((len(contents), size, size, 3), dtype=np.uint8)
    ok_rows: list[int] = []
    widths: list[int | None] = []
    heights: list[int | None] = []
    errors: list[str | None] = []
    for row, data in enumerate(contents):
        try:
            decoded, width, height = decode_image(data, size)
        except ImageError as error:
            reason: str | None = str(error)
        except Exception as error:  # a decoder bug must become an error row, not a failed task
            reason = f"unexpected decoder failure: {type(error).__name__}: {error}"
        else:
            pixels[len(ok_rows)] = decoded
            ok_rows.append(row)
            widths.append(width)
            heights.append(height)
            errors.append(None)
            continue
        widths.append(None)
        heights.append(None)
        errors.append(reason)
    return DecodedBatch(pixels[: len(ok_rows)], ok_rows, widths, heights, errors)


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """MobileNetV2's preprocessing: uint8 [0, 255] to float32 [-1, 1]."""
    scaled = pixels.astype(np.float32)
    scaled *= np.float32(1.0 / 127.5)
    scaled -= np.float32(1.0)
    return scaled
