"""decode_image / encode_image: every format and mode we read, EXIF orientation, and bad files.

All files are made here with Pillow (or by hand where Pillow cannot write them, e.g. 16-bit RGB PNG
and headers that lie about their size).
"""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ugpnet.images import (
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    ImageDecodeError,
    decode_image,
    encode_image,
    quantize_to_uint8,
    resize_alpha,
)

H, W = 24, 32
PALETTE = np.array([[200, 30, 40], [10, 220, 90], [60, 70, 250], [255, 255, 0]], dtype=np.uint8)
TRANSPARENT_INDEX = 2


def _ramps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three smooth uint8 planes: left-to-right, top-to-bottom and diagonal ramps (JPEG-friendly,
    and asymmetric, so any flip or rotation shows)."""
    y, x = np.mgrid[0:H, 0:W]
    along_x = (x * 255 // (W - 1)).astype(np.uint8)
    along_y = (y * 255 // (H - 1)).astype(np.uint8)
    diagonal = ((x + y) * 255 // (W + H - 2)).astype(np.uint8)
    return along_x, along_y, diagonal


def _rgb_pattern() -> np.ndarray:
    return np.stack(_ramps(), axis=2)


def _alpha_pattern() -> np.ndarray:
    # Never 0: lossless WebP may rewrite the colour of fully transparent pixels.
    return (10 + _ramps()[2].astype(np.int32) * 245 // 255).astype(np.uint8)


def _from_array(array: np.ndarray, mode: str) -> Image.Image:
    return Image.frombytes(mode, (array.shape[1], array.shape[0]), np.ascontiguousarray(array).tobytes())


def _palette_indices() -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    return ((x // 4 + y // 6) % len(PALETTE)).astype(np.uint8)


def _source(kind: str) -> tuple[Image.Image, np.ndarray, np.ndarray | None, int]:
    """(image to save, expected rgb in [0, 1], expected alpha or None, expected bit depth)."""
    along_x, along_y, _ = _ramps()
    rgb = _rgb_pattern()
    grey = along_x
    alpha = _alpha_pattern()
    if kind == "RGB":
        return _from_array(rgb, "RGB"), rgb / 255, None, 8
    if kind == "L":
        return _from_array(grey, "L"), np.repeat(grey[..., None], 3, 2) / 255, None, 8
    if kind == "LA":
        image = _from_array(np.stack([grey, alpha], axis=2), "LA")
        return image, np.repeat(grey[..., None], 3, 2) / 255, alpha / 255, 8
    if kind == "RGBA":
        return _from_array(np.dstack([rgb, alpha]), "RGBA"), rgb / 255, alpha / 255, 8
    if kind in ("P", "P+tRNS"):
        indices = _palette_indices()
        image = _from_array(indices, "P")
        image.putpalette(PALETTE.tobytes())
        expected_alpha = (indices != TRANSPARENT_INDEX).astype(np.float64) if kind == "P+tRNS" else None
        return image, PALETTE[indices] / 255, expected_alpha, 8
    if kind == "1":
        bits = ((along_x // 32 + along_y // 64) % 2).astype(bool)
        image = _from_array(bits.astype(np.uint8) * 255, "L").convert("1", dither=Image.Dither.NONE)
        return image, np.repeat(bits[..., None], 3, 2).astype(np.float64), None, 8
    if kind == "I;16":
        samples = along_x.astype(np.uint16) * 257
        samples[0, 0] = 1000  # not a multiple of 257: only survives with 16-bit precision
        image = _from_array(samples.astype("<u2"), "I;16")
        return image, np.repeat(samples[..., None], 3, 2) / 65535, None, 16
    if kind == "CMYK":
        cyan, magenta, key = along_x, along_y, (along_x // 2)
        yellow = 255 - along_y
        image = _from_array(np.stack([cyan, magenta, yellow, key], axis=2), "CMYK")
        ink = np.stack([cyan, magenta, yellow], axis=2).astype(np.float64)
        expected = (255 - ink) * (255 - key[..., None].astype(np.float64)) / 255**2
        return image, expected, None, 8
    raise AssertionError(kind)


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


LOSSLESS, LOSSY = "lossless", "lossy"
MATRIX = [
    *[("PNG", kind, {}, LOSSLESS) for kind in ("RGB", "L", "P", "P+tRNS", "LA", "RGBA", "I;16", "1")],
    *[("JPEG", kind, {"quality": 95}, LOSSY) for kind in ("RGB", "L", "CMYK")],
    *[("WEBP", kind, {"quality": 90}, LOSSY) for kind in ("RGB", "RGBA")],
    *[("WEBP", kind, {"lossless": True}, LOSSLESS) for kind in ("RGB", "RGBA")],
    *[("TIFF", kind, {}, LOSSLESS) for kind in ("RGB", "L", "P", "LA", "RGBA", "I;16", "1", "CMYK")],
    *[("BMP", kind, {}, LOSSLESS) for kind in ("RGB", "L", "P", "1")],
    *[("GIF", kind, {}, LOSSLESS) for kind in ("P", "P+tRNS")],
]


@pytest.mark.parametrize(("fmt", "kind", "options", "fidelity"), MATRIX,
                         ids=[f"{fmt}-{kind}-{fidelity}" for fmt, kind, _, fidelity in MATRIX])
def test_decode_matrix(fmt, kind, options, fidelity):
    image, expected_rgb, expected_alpha, bit_depth = _source(kind)
    if kind == "P+tRNS":
        options = {**options, "transparency": TRANSPARENT_INDEX}
    decoded = decode_image(_save(image, fmt, **options))

    assert isinstance(decoded, DecodedImage)
    assert decoded.rgb.shape == (H, W, 3) and decoded.rgb.dtype == np.float32
    assert (decoded.width, decoded.height) == (W, H)
    assert 0.0 <= decoded.rgb.min() and decoded.rgb.max() <= 1.0
    assert decoded.source_format == fmt
    assert decoded.bit_depth == bit_depth
    assert (decoded.alpha is None) == (expected_alpha is None)
    if fidelity == LOSSLESS:
        tolerance = 1e-6 if bit_depth == 16 else 0.5 / 255
        np.testing.assert_allclose(decoded.rgb, expected_rgb, rtol=0, atol=tolerance)
        if expected_alpha is not None:
            np.testing.assert_allclose(decoded.alpha, expected_alpha, rtol=0, atol=0.5 / 255)
    else:
        assert np.abs(decoded.rgb - expected_rgb).mean() < 0.03
        assert np.abs(decoded.rgb - expected_rgb).max() < 0.25
        if expected_alpha is not None:
            assert np.abs(decoded.alpha - expected_alpha).mean() < 0.03


@pytest.mark.parametrize(("kind", "fmt", "mode"), [
    ("CMYK", "JPEG", "CMYK"), ("I;16", "PNG", "I;16"), ("LA", "PNG", "LA"), ("P", "PNG", "P"),
    ("1", "PNG", "1"), ("L", "JPEG", "L")])
def test_source_mode_is_the_file_mode(kind, fmt, mode):
    assert decode_image(_save(_source(kind)[0], fmt)).source_mode == mode


def test_decoded_arrays_are_writable_float32():
    decoded = decode_image(_save(_source("RGBA")[0], "PNG"))
    assert decoded.rgb.flags.writeable and decoded.alpha.flags.writeable
    assert decoded.alpha.dtype == np.float32


# --- 16-bit precision -------------------------------------------------------------------------

def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_bytes(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes,
               extra_chunks: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + extra_chunks
            + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))


def _png16_by_hand(samples: np.ndarray, colour_type: int, extra_chunks: bytes = b"") -> bytes:
    """A 16-bit PNG Pillow cannot write; rows cycle through filters None, Sub and Up so that the
    decoder's unfiltering (which works on whole pixels) is exercised."""
    height, width, channels = samples.shape
    pixel_bytes = 2 * channels
    rows = [samples[y].astype(">u2").tobytes() for y in range(height)]
    stream = b""
    for y, row in enumerate(rows):
        raw = np.frombuffer(row, dtype=np.uint8).astype(np.int32)
        filter_type = y % 3
        if filter_type == 1:  # Sub: difference to the same byte of the pixel on the left
            previous = np.concatenate([np.zeros(pixel_bytes, np.int32), raw[:-pixel_bytes]])
        elif filter_type == 2:  # Up: difference to the byte above
            previous = np.frombuffer(rows[y - 1], dtype=np.uint8).astype(np.int32)
        else:
            previous = np.zeros_like(raw)
        stream += bytes([filter_type]) + ((raw - previous) % 256).astype(np.uint8).tobytes()
    return _png_bytes(width, height, 16, colour_type, zlib.compress(stream), extra_chunks)


@pytest.mark.parametrize(("colour_type", "channels"), [(2, 3), (6, 4)], ids=["RGB16", "RGBA16"])
def test_16_bit_colour_png_keeps_full_precision(colour_type, channels):
    samples = np.random.default_rng(1).integers(0, 65536, (7, 9, channels), dtype=np.uint16)
    samples[0, 0, 0] = 1000
    decoded = decode_image(_png16_by_hand(samples, colour_type))
    assert decoded.bit_depth == 16
    np.testing.assert_allclose(decoded.rgb, samples[..., :3] / 65535, rtol=0, atol=1e-6)
    assert abs(decoded.rgb[0, 0, 0] - 1000 / 65535) < 1e-6
    if channels == 4:
        np.testing.assert_allclose(decoded.alpha, samples[..., 3] / 65535, rtol=0, atol=1e-6)
    else:
        assert decoded.alpha is None


def test_16_bit_rgb_png_colour_key_becomes_alpha():
    samples = np.random.default_rng(2).integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    key = samples[2, 3].copy()
    samples[4, 1] = key
    samples[0, 0] = key + np.array([0, 0, 1], dtype=np.uint16)  # differs only in the low byte
    decoded = decode_image(_png16_by_hand(samples, 2, _png_chunk(b"tRNS", key.astype(">u2").tobytes())))
    expected = np.ones((5, 6), dtype=np.float32)
    expected[2, 3] = expected[4, 1] = 0.0
    np.testing.assert_array_equal(decoded.alpha, expected)


def test_16_bit_colour_png_is_turned_upright_with_full_precision():
    upright = np.random.default_rng(5).integers(0, 65536, (5, 8, 3), dtype=np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6
    orientation_chunk = _png_chunk(b"eXIf", exif.tobytes())
    decoded = decode_image(_png16_by_hand(STORED_FOR_ORIENTATION[6](upright), 2, orientation_chunk))
    np.testing.assert_allclose(decoded.rgb, upright / 65535, rtol=0, atol=1e-6)


def test_16_bit_grey_tiff_keeps_precision():
    image, expected, _, _ = _source("I;16")
    decoded = decode_image(_save(image, "TIFF"))
    assert decoded.bit_depth == 16
    assert abs(decoded.rgb[0, 0, 1] - 1000 / 65535) < 1e-6
    np.testing.assert_allclose(decoded.rgb, expected, rtol=0, atol=1e-6)


def test_float_tiff_is_clamped_into_range():
    values = np.linspace(-0.5, 1.5, H * W, dtype=np.float32).reshape(H, W)
    values[0, 0] = np.nan
    decoded = decode_image(_save(_from_array(values, "F"), "TIFF"))
    expected = np.clip(np.nan_to_num(values, nan=0.0), 0, 1)
    np.testing.assert_allclose(decoded.rgb[..., 2], expected, rtol=0, atol=1e-7)


def test_32_bit_integer_tiff_is_read_as_16_bit_when_it_fits():
    samples = np.array([[0, 1000, 65535]], dtype=np.int32)
    decoded = decode_image(_save(_from_array(samples, "I"), "TIFF"))
    np.testing.assert_allclose(decoded.rgb[0, :, 0], samples[0] / 65535, rtol=0, atol=1e-7)
    samples[0, 0] = 70000
    with pytest.raises(ImageDecodeError, match="outside the 16-bit range"):
        decode_image(_save(_from_array(samples, "I"), "TIFF"))


# --- EXIF orientation -------------------------------------------------------------------------

# What is stored on disk for each orientation, given what the viewer should see (`upright`).
STORED_FOR_ORIENTATION = {
    1: lambda upright: upright,
    2: lambda upright: upright[:, ::-1],
    3: lambda upright: upright[::-1, ::-1],
    4: lambda upright: upright[::-1, :],
    5: lambda upright: upright.swapaxes(0, 1),
    6: lambda upright: np.rot90(upright, 1),  # the viewer turns it 90 degrees clockwise
    7: lambda upright: upright.swapaxes(0, 1)[::-1, ::-1],
    8: lambda upright: np.rot90(upright, -1),
}


def _with_orientation(stored: np.ndarray, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"quality": 95} if fmt == "JPEG" else {}
    return _save(_from_array(stored, "RGB"), fmt, exif=exif.tobytes(), **options)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_gives_upright_pixels(orientation):
    upright = _rgb_pattern()
    stored = STORED_FOR_ORIENTATION[orientation](upright)
    decoded = decode_image(_with_orientation(stored, orientation, "JPEG"))
    assert decoded.rgb.shape == (H, W, 3)  # sides swapped back for 5..8
    assert np.abs(decoded.rgb - upright / 255).mean() < 0.02


def test_png_exif_orientation_is_exact():
    upright = _rgb_pattern()
    decoded = decode_image(_with_orientation(STORED_FOR_ORIENTATION[6](upright), 6, "PNG"))
    np.testing.assert_allclose(decoded.rgb, upright / 255, rtol=0, atol=1e-6)


# --- first frame of multi-frame files ---------------------------------------------------------

@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "TIFF", "PNG"])
def test_multi_frame_files_decode_their_first_frame(fmt):
    red, blue = (Image.new("RGB", (W, H), colour) for colour in ((255, 0, 0), (0, 0, 255)))
    options = {"lossless": True} if fmt == "WEBP" else {}
    decoded = decode_image(_save(red, fmt, save_all=True, append_images=[blue], **options))
    np.testing.assert_allclose(decoded.rgb.reshape(-1, 3).mean(0), [1, 0, 0], atol=0.02)


# --- bad files --------------------------------------------------------------------------------

def _good_png() -> bytes:
    return _save(_source("RGB")[0], "PNG")


def _good_jpeg() -> bytes:
    return _save(_source("RGB")[0], "JPEG", quality=95)


def _jpeg_claiming_size(width: int, height: int) -> bytes:
    data = bytearray(_good_jpeg())
    frame = data.index(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
    data[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_with_broken_second_idat() -> bytes:
    stream = zlib.compress(b"\0" + bytes(range(24)) + b"\0" + bytes(range(24)), 0)  # 8x2 RGB, stored
    idats = _png_chunk(b"IDAT", stream[:20]) + _png_chunk(b"\x00\x01\x02\x03", stream[20:])
    return _png_bytes(8, 2, 8, 2, b"")[:33] + idats + _png_chunk(b"IEND", b"")


BAD_FILES = {
    "zero bytes": (lambda: b"", "zero bytes"),
    "truncated PNG": (lambda: _good_png()[: len(_good_png()) // 2], "truncated PNG"),
    "truncated JPEG": (lambda: _good_jpeg()[: len(_good_jpeg()) // 2], "truncated JPEG"),
    "truncated WebP": (lambda: _save(_source("RGB")[0], "WEBP")[:-40], "truncated WEBP"),
    "text named .jpg": (lambda: b"this is not a photo, just a note\n" * 20, "looks like text"),
    "HTML error page": (lambda: b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>", "HTML"),
    "random garbage": (lambda: np.random.default_rng(3).bytes(4096), "not an image"),
    "PNG signature then junk": (lambda: b"\x89PNG\r\n\x1a\n" + b"\x00\x01junk" * 10,
                                "corrupt or truncated PNG"),
    "garbage PNG pixels": (lambda: _png_bytes(8, 8, 8, 2, zlib.compress(b"\x07" * 200)), "corrupt PNG"),
    "short IHDR (ValueError)": (
        lambda: b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", bytes(8)) + _png_chunk(b"IEND", b""),
        "Truncated IHDR chunk"),
    "broken chunk between IDATs (SyntaxError)": (_png_with_broken_second_idat, "corrupt PNG file"),
    "HEIC": (lambda: b"\x00\x00\x00\x18ftypheic" + bytes(64), "unsupported image format HEIC"),
    "zero-size PNG": (lambda: _png_bytes(0, 5, 8, 2, zlib.compress(b"")), "zero-size"),
    "huge PNG header": (lambda: _png_bytes(40000, 40000, 8, 2, zlib.compress(b"\0" * 4)),
                        "decompression bomb: 40000x40000 = 1600 Mpx exceeds the limit of 100 Mpx"),
    "huge JPEG header": (lambda: _jpeg_claiming_size(60000, 60000), "decompression bomb"),
    "absurd 1x70000": (lambda: _png_bytes(1, 70000, 8, 2, zlib.compress(b"\0" * 4)),
                       "absurd size 1x70000"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_raise_one_error_type_naming_the_cause(name):
    make, cause = BAD_FILES[name]
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(make())
    assert cause in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_size_is_checked_from_the_header_before_decoding():
    # 12000x10000 passes Pillow's own hard limit, so only our header check stands between it and a
    # 360 MB decode; the IDAT holds 4 bytes, so decoding would report truncation, not a bomb.
    data = _png_bytes(12000, 10000, 8, 2, zlib.compress(b"\0" * 4))
    with pytest.raises(ImageDecodeError, match="decompression bomb: 12000x10000 = 120 Mpx"):
        decode_image(data)
    assert DEFAULT_MAX_PIXELS < 12000 * 10000


def test_max_pixels_and_max_side_are_honoured_on_real_images():
    data = _good_png()
    with pytest.raises(ImageDecodeError, match=f"decompression bomb: {W}x{H} = {W * H} px"):
        decode_image(data, max_pixels=W * H - 1)
    with pytest.raises(ImageDecodeError, match="absurd size"):
        decode_image(data, max_side=W - 1)
    assert decode_image(data, max_pixels=W * H, max_side=W).width == W


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damage it skips
def test_mangled_files_never_raise_anything_but_image_decode_error():
    rng = np.random.default_rng(4)
    formats_and_kinds = [("PNG", "RGBA"), ("JPEG", "RGB"), ("WEBP", "RGB"), ("TIFF", "RGB"), ("BMP", "P"),
                         ("GIF", "P")]
    sources = [_save(_source(kind)[0], fmt) for fmt, kind in formats_and_kinds]
    for data in sources:
        for _ in range(30):
            mangled = bytearray(data[: rng.integers(1, len(data) + 1)])
            for position in rng.integers(0, len(mangled), size=rng.integers(0, 4)):
                mangled[position] = rng.integers(0, 256)
            try:
                decoded = decode_image(bytes(mangled))
            except ImageDecodeError:
                continue
            assert 0.0 <= decoded.rgb.min() and decoded.rgb.max() <= 1.0


def test_accepts_bytearray_and_memoryview_but_not_str():
    data = _good_png()
    assert decode_image(bytearray(data)).width == W
    assert decode_image(memoryview(data)).width == W
    with pytest.raises(TypeError):
        decode_image("not bytes")


# --- encoding ---------------------------------------------------------------------------------

def test_png_round_trip_is_exact_for_multiples_of_1_255():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([levels, levels[::-1], levels.T], axis=2).astype(np.float32) / 255
    decoded = decode_image(encode_image(rgb, fmt="png"))
    np.testing.assert_array_equal(decoded.rgb, rgb)


def test_quantize_rounds_half_up_and_clamps():
    assert np.float64(2.5) / 255 * 255 == 2.5  # the half case below is exact in float64
    values = np.array([0.5 / 255 - 1e-6, 0.5 / 255 + 1e-6, 254.5 / 255 - 1e-6, 254.5 / 255 + 1e-6,
                       np.float64(2.5) / 255, -0.3, -1e-9, 1.0, 1.7, np.nan])
    expected = [0, 1, 254, 255, 3, 0, 0, 255, 255, 0]  # np.round would give 2 for the half case
    quantized = quantize_to_uint8(values)
    assert quantized.dtype == np.uint8
    np.testing.assert_array_equal(quantized, expected)


def test_quantize_maps_every_float32_level_back_to_itself():
    levels = np.arange(256)
    np.testing.assert_array_equal(quantize_to_uint8(levels.astype(np.float32) / np.float32(255)), levels)
    np.testing.assert_array_equal(quantize_to_uint8(levels / 255.0), levels)


def test_encode_clamps_out_of_range_values():
    rgb = np.full((2, 3, 3), 0.5, dtype=np.float32)
    rgb[0, 0], rgb[1, 2] = -4.0, 9.0
    decoded = decode_image(encode_image(rgb, fmt="PNG"))
    np.testing.assert_array_equal(decoded.rgb[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(decoded.rgb[1, 2], [1, 1, 1])
    assert decoded.rgb[0, 1, 0] == np.float32(128) / 255  # 0.5 * 255 + 0.5 = 128


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_alpha_is_kept_where_the_format_has_it(fmt):
    rgb = _rgb_pattern() / 255
    alpha = _alpha_pattern() / 255
    decoded = decode_image(encode_image(rgb, alpha=alpha, fmt=fmt))
    assert decoded.alpha is not None
    np.testing.assert_allclose(decoded.alpha, alpha, rtol=0, atol=0.5 / 255 if fmt == "png" else 0.02)


@pytest.mark.parametrize("fmt", ["jpg", "JPEG"])
def test_jpeg_drops_alpha(fmt):
    rgb = _rgb_pattern() / 255
    decoded = decode_image(encode_image(rgb, alpha=np.zeros((H, W)), fmt=fmt, quality=90))
    assert decoded.source_format == "JPEG" and decoded.alpha is None
    assert np.abs(decoded.rgb - rgb).mean() < 0.02


@pytest.mark.parametrize(("rgb", "kwargs", "message"), [
    (np.zeros((4, 4, 3)), {"fmt": "gif"}, "'gif'"),
    (np.zeros((4, 4, 3)), {"fmt": "bmp"}, "'bmp'"),  # tiff became an output format (issue 14)
    (np.zeros((4, 4)), {}, r"\(4, 4\)"),
    (np.zeros((4, 4, 4)), {}, r"\(4, 4, 4\)"),
    (np.zeros((0, 4, 3)), {}, r"\(0, 4, 3\)"),
    (np.zeros((4, 4, 3)), {"alpha": np.zeros((4, 5))}, r"\(4, 5\)"),
    (np.zeros((4, 4, 3)), {"fmt": "jpg", "quality": 0}, "quality"),
])
def test_encode_rejects_bad_arguments(rgb, kwargs, message):
    with pytest.raises(ValueError, match=message):
        encode_image(rgb, **kwargs)


# --- alpha resizing ---------------------------------------------------------------------------

def test_resize_alpha_keeps_range_and_flat_values():
    step = np.zeros((8, 8), dtype=np.float32)
    step[:, 4:] = 1.0  # a hard edge: bicubic overshoots here before the clamp
    resized = resize_alpha(step, width=21, height=13)
    assert resized.shape == (13, 21) and resized.dtype == np.float32
    assert resized.min() == 0.0 and resized.max() == 1.0
    assert 0.0 < resized[6, 10] < 1.0  # the edge is interpolated, not copied
    np.testing.assert_allclose(resize_alpha(np.full((5, 7), 0.25), 3, 9), 0.25, atol=1e-6)
    with pytest.raises(ValueError):
        resize_alpha(np.zeros((2, 2, 1)), 4, 4)


def test_the_pipelines_take_the_endings_the_decoder_reads():
    from pipelines.common.shared_options import DEFAULT_EXTENSIONS
    from pipelines.train.config import IMAGE_EXTENSIONS
    from ugpnet.images import PHOTO_EXTENSIONS, READABLE_EXTENSIONS

    assert DEFAULT_EXTENSIONS == READABLE_EXTENSIONS
    assert IMAGE_EXTENSIONS == PHOTO_EXTENSIONS == tuple(e for e in READABLE_EXTENSIONS if e != ".gif")

