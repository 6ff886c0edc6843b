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
from PIL import Image, UnidentifiedImageError

# Which names a run reads is the contract's (fruits_contract.IMAGE_SUFFIXES, is_image_name): the
# trigger and reconcile select the same objects. The suffix only selects files: the bytes
# decide the format.
from fruits_contract import EMPTY_FILE

# What Pillow may open, by content. Anything else (GIF, BMP, TIFF, EPS, which would start
# Ghostscript, PDF...) is named and rejected: a float TIFF renamed .png decodes as black.
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP")
# Decode memory is bounded from the header, before any pixel is decoded. 50 MP admits every
# phone camera in use (48-50 MP sensors) and Pillow's own guard (89 MP) would admit a
# 1 x 89,000,000 PNG of 173 KB that takes gigabytes to convert; a side or aspect ratio past
# these is a strip, not a photo, and would be squashed to nothing. WebP cannot be decoded at
# a reduced scale and Pillow holds two full RGBA copies of it, so its cap is half. Peak
# memory per Python worker on the worst inputs: BENCHMARKS.md ("Decode memory").
MAX_PIXELS = 50_000_000
MAX_PIXELS_BY_FORMAT = {"WEBP": 25_000_000}
MAX_SIDE = 16_384
MAX_ASPECT_RATIO = 10.0
# Magic numbers of formats that are not decoded, so a reason can name what a file really is.
SIGNATURES = (
    (0, b"GIF8", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"%!PS", "PostScript/EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "PostScript/EPS"),
    (0, b"%PDF", "PDF"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypmsf1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
)
# White, because Fruits-360 style photos are shot on white: transparent pixels become background.
BACKGROUND = (255, 255, 255)
EXIF_ORIENTATION = 0x0112
UPRIGHT = 1
ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # orientations that swap width and height
# EXIF orientation -> the transposition that makes the image upright (ImageOps.exif_transpose's
# table, applied here after the image has been shrunk rather than to the full-size image).
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# A decoded image is box-reduced while its shorter side stays at least this many times the
# network input, so the bilinear resize that follows still has pixels to average.
SHRINK_MARGIN = 2


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


def sniffed_format(data: bytes) -> str | None:
    """The format a file's first bytes announce, among those that are never decoded."""
    for offset, magic, name in SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return name
    return None


def check_dimensions(width: int, height: int, image_format: str | None = None) -> None:
    """Refuse, from the header alone, an image whose decoding memory is not bounded."""
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    limit = MAX_PIXELS_BY_FORMAT.get(image_format or "", MAX_PIXELS)
    if width * height > limit:
        raise ImageError(
            f"image too large: {width}x{height} = {width * height / 1e6:.1f} MP "
            f"(limit {limit / 1e6:.0f} MP{f' for {image_format}' if limit != MAX_PIXELS else ''})"
        )
    if max(width, height) > MAX_SIDE:
        raise ImageError(f"image too large: {width}x{height} (limit {MAX_SIDE} px per side)")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageError(
            f"extreme aspect ratio: {width}x{height} (at most {MAX_ASPECT_RATIO:g}:1 is a photo)"
        )


def _open(data: bytes) -> Image.Image:
    """Open the bytes as one of ``PHOTO_FORMATS`` only, whatever the file is called."""
    try:
        return Image.open(io.BytesIO(data), formats=PHOTO_FORMATS)
    except UnidentifiedImageError as error:
        found = sniffed_format(data)
        if found is not None:
            raise ImageError(
                f"unsupported format: the content is {found}, not JPEG, PNG or WebP "
                "(convert the photo to JPEG)"
            ) from error
        raise ImageError("not a readable image (unknown or corrupt format)") from error


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


def _shrunk(image: Image.Image, size: int) -> Image.Image:
    """A decoded image much larger than the network input, box-reduced in its own mode
    before any conversion copies it: a 50 MP RGBA PNG would otherwise be converted and
    composited at full size (BENCHMARKS.md, "Decode memory"). JPEGs were already reduced by
    ``draft`` and are left as they are; the final resize stays the same bilinear one."""
    factor = min(image.size) // (SHRINK_MARGIN * size)
    if factor < 2:
        return image
    if image.mode.startswith("I;16"):
        image = image.convert("I")  # reduce() takes 32-bit integers, not 16-bit
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    return image.reduce(factor)


def decode_image(data: bytes | None, size: int) -> tuple[np.ndarray, int, int]:
    """Decode, orient, convert to RGB and resize to ``size``x``size`` (uint8).

    Returns the pixels and the original width and height (after EXIF orientation).
    The resize squashes rather than crops, as Keras' ``load_img(target_size=...)`` does.
    The size is checked from the header before decoding (``check_dimensions``), and
    Pillow's decompression-bomb guard stays on as a second line.
    """
    if not data:
        raise ImageError(EMPTY_FILE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = _open(data)
            width, height = image.size
            check_dimensions(width, height, image.format)
            orientation = image.getexif().get(EXIF_ORIENTATION, UPRIGHT)
            if orientation in ROTATING_ORIENTATIONS:
                width, height = height, width
            image.draft("RGB", (size, size))  # JPEG: decode at reduced scale when much larger
            image.load()
            image = _shrunk(image, size)
            if orientation in TRANSPOSE:
                image = image.transpose(TRANSPOSE[orientation])
            rgb = _to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"image too large (decompression bomb guard): {error}") from error
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
