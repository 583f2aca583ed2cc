"""Depth, colour profile and EXIF from input to output (issue 14), at the image-file level.

The pipeline-level tests (a folder restored with `--ext auto`, `--strip-metadata`) are in
test_restore_metadata.py; here every byte is checked with Pillow (and the 16-bit samples, which
Pillow reads only as their high bytes, with this project's decoder, whose 16-bit path is tested
against hand-built PNGs in test_images.py).
"""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms
from restore_samples import camera_exif, png16_with_profile_and_exif, srgb_profile

from ugpnet.image_metadata import ImageMetadata, output_exif, rgb_icc_profile
from ugpnet.images import decode_image, encode_image

MODEL, COPYRIGHT, DATE = "UGPNet TestCam 1", "(c) The Archive", "2021:06:05 14:30:00"
ORIENTATION, PHOTO_IFD = 0x0112, 0x8769


def upright_levels(stored: np.ndarray) -> np.ndarray:
    """Orientation 6 means: rotate 90° clockwise to view."""
    return np.rot90(stored, k=-1)


def png_bit_depth(data: bytes) -> int:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return data[24]


def levels16(data: bytes) -> np.ndarray:
    decoded = decode_image(data)
    assert decoded.bit_depth == 16
    return np.rint(decoded.rgb * 65535).astype(np.int64)


def assert_camera_exif_upright(image: Image.Image, width: int, height: int) -> None:
    exif = image.getexif()
    assert ORIENTATION not in exif
    assert exif[0x0110] == MODEL and exif[0x8298] == COPYRIGHT
    photo = exif.get_ifd(PHOTO_IFD)
    assert photo[0x9003] == DATE
    assert (photo[0xA002], photo[0xA003]) == (width, height)


def test_a_16_bit_png_keeps_its_depth_profile_and_exif_and_is_written_upright():
    data, stored = png16_with_profile_and_exif(40, 24)
    decoded = decode_image(data)
    assert decoded.bit_depth == 16 and decoded.rgb.shape == (40, 24, 3)
    assert decoded.metadata.icc_profile == srgb_profile()

    out = encode_image(decoded.rgb, fmt="png", bit_depth=16, metadata=decoded.metadata)
    assert png_bit_depth(out) == 16
    with Image.open(io.BytesIO(out)) as image:
        image.load()
        assert image.size == (24, 40)
        assert image.info["icc_profile"] == srgb_profile()
        assert_camera_exif_upright(image, 24, 40)
    levels = levels16(out)
    assert np.array_equal(levels, upright_levels(stored))
    assert (levels % 257 != 0).any()  # true 16-bit samples, not 8-bit ones widened


def test_a_16_bit_tiff_output_round_trips_exactly_with_profile_and_exif():
    data, stored = png16_with_profile_and_exif(30, 20)
    decoded = decode_image(data)
    out = encode_image(decoded.rgb, fmt="tiff", bit_depth=16, metadata=decoded.metadata)
    with Image.open(io.BytesIO(out)) as image:
        image.load()
        assert image.format == "TIFF" and image.size == (20, 30)
        assert image.tag_v2[258] == (16, 16, 16)
        assert image.info["icc_profile"] == srgb_profile()
        assert_camera_exif_upright(image, 20, 30)
    assert np.array_equal(levels16(out), upright_levels(stored))  # the decoder reads 16-bit TIFF too


def test_16_bit_rgba_png_and_tiff_keep_alpha_at_16_bits():
    rng = np.random.default_rng(3)
    rgb = rng.random((9, 7, 3), dtype=np.float32)
    alpha = rng.random((9, 7), dtype=np.float32)
    for fmt in ("png", "tiff"):
        decoded = decode_image(encode_image(rgb, alpha=alpha, fmt=fmt, bit_depth=16))
        assert decoded.bit_depth == 16
        assert np.abs(decoded.alpha - alpha).max() <= 0.5 / 65535 + 1e-7
        assert np.abs(decoded.rgb - rgb).max() <= 0.5 / 65535 + 1e-7


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpg", "JPEG"), ("webp", "WEBP")])
def test_jpeg_and_webp_hold_8_bits_but_keep_profile_and_exif(fmt, pil_format):
    data, _ = png16_with_profile_and_exif(40, 24)
    decoded = decode_image(data)
    out = encode_image(decoded.rgb, fmt=fmt, bit_depth=16, metadata=decoded.metadata)
    with Image.open(io.BytesIO(out)) as image:
        image.load()
        assert image.format == pil_format and image.mode == "RGB" and image.size == (24, 40)
        assert image.info["icc_profile"] == srgb_profile()
        assert_camera_exif_upright(image, 24, 40)


def test_a_profile_that_is_not_rgb_is_not_carried_to_the_rgb_output():
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    assert lab[16:20] == b"Lab " and rgb_icc_profile(lab) == b""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 20, 40)).save(buffer, format="JPEG", icc_profile=lab)
    assert decode_image(buffer.getvalue()).metadata.icc_profile == b""
    assert rgb_icc_profile(srgb_profile()) == srgb_profile()


def test_a_tiff_input_s_storage_tags_do_not_reach_the_output_exif():
    buffer = io.BytesIO()
    exif = camera_exif(16, 12, orientation=1)
    Image.new("RGB", (16, 12), (10, 200, 30)).save(buffer, format="TIFF", exif=exif)
    decoded = decode_image(buffer.getvalue())
    out = encode_image(decoded.rgb, fmt="png", metadata=decoded.metadata)
    with Image.open(io.BytesIO(out)) as image:
        tags = image.getexif()
        assert tags[0x0110] == MODEL
        assert not {256, 257, 258, 259, 273, 279} & set(tags)  # the TIFF's, not this PNG's


def test_damaged_exif_is_left_out_and_the_image_still_decodes():
    data, _ = png16_with_profile_and_exif(8, 6)
    start = data.index(b"eXIf") + 4
    length = struct.unpack(">I", data[start - 8:start - 4])[0]
    damaged = bytearray(data)
    damaged[start:start + length] = b"\xff" * length  # neither byte order nor any directory
    body = bytes(damaged[start - 4:start + length])
    damaged[start + length:start + length + 4] = struct.pack(">I", zlib.crc32(body))
    decoded = decode_image(bytes(damaged))
    assert decoded.rgb.shape == (6, 8, 3)  # as stored: the orientation was in the unreadable EXIF
    assert output_exif(decoded.metadata.exif, 8, 6) == b""
    assert decode_image(encode_image(decoded.rgb, fmt="png", metadata=decoded.metadata)).rgb.shape == (6, 8, 3)


def test_no_metadata_writes_the_same_bytes_as_before():
    rgb = np.random.default_rng(1).random((5, 6, 3), dtype=np.float32)
    assert encode_image(rgb, metadata=ImageMetadata()) == encode_image(rgb)
    assert output_exif(b"", 6, 5) == b""
