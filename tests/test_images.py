"""Decoding what users actually upload: every input becomes pixels or a reason."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from emr_serverless_job.fruit_blobs import fruit_image
from emr_serverless_job.images import (
    ImageError,
    decode_batch,
    decode_image,
    preprocess,
)
from fruits_contract import is_image_name
from fruits_demo.image_sets import truncated_jpeg

SIZE = 32


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size; enough for Pillow to apply its bomb guard."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "I;16"])
def test_every_colour_mode_becomes_rgb(mode):
    source = fruit_image("Kiwi", 0, 64)
    converted = source.convert("L").convert(mode) if mode == "I;16" else source.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    pixels, width, height = decode_image(encode(converted, fmt), SIZE)
    assert pixels.shape == (SIZE, SIZE, 3)
    assert pixels.dtype == np.uint8
    assert (width, height) == (64, 64)
    # White background survives every conversion (no black or inverted corners).
    assert pixels[0, 0].min() > 200, f"{mode}: corner is {pixels[0, 0]}"


def test_transparent_pixels_become_white_not_black():
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    pixels, _, _ = decode_image(encode(image, "PNG"), SIZE)
    assert pixels.min() == 255


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    ramp = np.linspace(0, 60000, 64 * 64).reshape(64, 64).astype(np.uint16)
    pixels, _, _ = decode_image(encode(Image.fromarray(ramp), "PNG"), SIZE)
    # Clipping would turn nearly the whole ramp white (mean ~255); scaling keeps it a ramp.
    assert 100 < pixels.mean() < 160
    assert pixels.min() < 20 and pixels.max() > 200


def test_exif_orientation_is_applied():
    # A wide image, left half red, stored with "rotate 90 CW" (orientation 6).
    image = Image.new("RGB", (80, 40), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels, width, height = decode_image(encode(image, "JPEG", exif=exif), SIZE)
    assert (width, height) == (40, 80), "reported size is the upright one"
    top, bottom = pixels[: SIZE // 4].mean(axis=(0, 1)), pixels[-SIZE // 4 :].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 80, "red half is on top once upright"
    assert bottom[2] > 200 and bottom[0] < 80


def test_large_jpeg_is_resized_to_the_network_size():
    pixels, width, height = decode_image(encode(fruit_image("Banana", 3, 900), "JPEG"), SIZE)
    assert pixels.shape == (SIZE, SIZE, 3)
    assert (width, height) == (900, 900)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (None, "empty file"),
        (b"hello, not an image", "not a readable image"),
        (truncated_jpeg(), "truncated"),
        (png_header_only(7_000, 7_200), "image too large: 7000x7200 = 50.4 MP"),
        (png_header_only(89_000_000, 1), "image too large: 89000000x1"),
        (png_header_only(16_000, 1_500), "extreme aspect ratio: 16000x1500"),
        (png_header_only(17_000, 17_000), "image too large"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "the content is HEIC"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "the content is PostScript"),
    ],
)
def test_undecodable_inputs_raise_with_a_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data, SIZE)


@pytest.mark.parametrize(("fmt", "name"), [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_format_is_decided_by_content_not_by_suffix(fmt, name):
    # GIVEN a picture Pillow could open, saved as a format that is not a photo format
    data = encode(fruit_image("Kiwi", 0, 64), fmt)
    # WHEN it is decoded (whatever its file was called) THEN it is refused, naming the format
    with pytest.raises(ImageError, match=f"the content is {name}, not JPEG, PNG or WebP"):
        decode_image(data, SIZE)


def test_float_tiff_named_png_is_refused_not_decoded_black():
    data = encode(Image.fromarray(np.full((40, 40), 0.5, dtype=np.float32)), "TIFF")
    with pytest.raises(ImageError, match="TIFF"):
        decode_image(data, SIZE)


def test_webp_is_a_photo_format():
    pixels, width, height = decode_image(encode(fruit_image("Kiwi", 0, 64), "WEBP"), SIZE)
    assert pixels.shape == (SIZE, SIZE, 3) and (width, height) == (64, 64)


def test_large_webp_has_a_lower_cap_than_png():
    with pytest.raises(ImageError, match="limit 25 MP for WEBP"):
        decode_image(encode(Image.new("RGB", (6_000, 6_000)), "WEBP", quality=1), SIZE)


@pytest.mark.parametrize("mode", ["RGBA", "P", "I;16"])
def test_large_images_are_shrunk_before_conversion_and_stay_faithful(mode):
    # GIVEN a large image whose left half is dark, in a mode that cannot be drafted
    base = np.full((600, 800), 230, dtype=np.uint8)
    base[:, :400] = 20
    image = Image.fromarray(base).convert("RGB")
    image = Image.fromarray(base.astype(np.uint16) * 256) if mode == "I;16" else image.convert(mode)
    # WHEN decoded to a small input (box-reduced first, then resized)
    pixels, width, height = decode_image(encode(image, "PNG"), SIZE)
    # THEN the size is the original one and the picture is the same picture
    assert (width, height) == (800, 600)
    left, right = pixels[:, : SIZE // 2 - 2].mean(), pixels[:, SIZE // 2 + 2 :].mean()
    assert left < 60 and right > 180, (left, right)


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_every_exif_orientation_matches_pillows_own_transpose(orientation):
    from PIL import ImageOps

    image = Image.fromarray(np.arange(48 * 80 * 3, dtype=np.uint8).reshape(48, 80, 3) * 7 % 251)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(image, "PNG", exif=exif)
    pixels, _, _ = decode_image(data, 48)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    expected = np.asarray(expected.resize((48, 48), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(pixels, expected)


def test_batch_keeps_order_and_reasons():
    good = encode(fruit_image("Banana", 1), "JPEG")
    batch = decode_batch([good, b"", good, b"junk"], SIZE)
    assert batch.ok_rows == [0, 2]
    assert batch.pixels.shape == (2, SIZE, SIZE, 3)
    assert batch.errors[0] is None and batch.errors[2] is None
    assert "empty" in batch.errors[1] and "not a readable image" in batch.errors[3]
    assert batch.widths == [100, None, 100, None]


def test_batch_of_only_broken_inputs_is_empty_not_an_error():
    batch = decode_batch([b"", b"x"], SIZE)
    assert batch.pixels.shape == (0, SIZE, SIZE, 3)
    assert batch.ok_rows == []


def test_preprocess_matches_mobilenet_v2_range():
    pixels = np.array([[[[0, 127, 255]]]], dtype=np.uint8)
    out = preprocess(pixels)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [-1.0, 127 / 127.5 - 1, 1.0], atol=1e-6)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a/b.jpg", True),
        ("a/b.JPEG", True),
        ("x.Png", True),
        ("x.webp", True),
        ("IMG_1.HEIC", True),
        ("x.gif", False),
        ("jpg", False),
    ],
)
def test_image_suffixes_in_any_case(path, expected):
    assert is_image_name(path) is expected
