"""Image files to float arrays and back, with one exception type for every bad file.

Every pipeline decodes untrusted archive bytes here, so a bad file must fail in exactly one
predictable way (`ImageDecodeError`, a `ValueError`) whatever went wrong inside Pillow, and must
fail before it costs much: sizes are checked from the header before any pixel is decoded.

Value ranges: decoded `rgb`/`alpha` are float32 in [0, 1]; `encode_image` takes floats in any
range and clamps them to [0, 1] while quantising with the official UGPNet rounding rule.

No Pillow global (`Image.MAX_IMAGE_PIXELS`, `ImageFile.LOAD_TRUNCATED_IMAGES`) is changed here;
if some other code in the process sets `LOAD_TRUNCATED_IMAGES = True`, Pillow pads truncated
files instead of failing and this module can no longer detect truncation.
"""

import io
import re
import struct
import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from ugpnet.deep_writers import write_png16, write_tiff16
from ugpnet.image_metadata import ImageMetadata, output_exif, read_metadata

DEFAULT_MAX_PIXELS = 100_000_000
"""Largest width*height (pixels) `decode_image` accepts by default: 100 Mpx is a 10000x10000 scan
and already takes 1.2 GB as float32 RGB. Note that Pillow itself refuses images above twice its
own `Image.MAX_IMAGE_PIXELS` (about 179 Mpx by default) even when `max_pixels` is larger."""

DEFAULT_MAX_SIDE = 65_535
"""Largest width or height (pixels) accepted by default; the largest side a JPEG or WebP can hold,
so anything longer is a corrupt header or a deliberate 1xN bomb."""

# Formats that hold photographs in an archive. Naming them stops Pillow from trying every plugin
# it has on hostile bytes (EPS, for one, would hand the bytes to Ghostscript).
_READABLE_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
READABLE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")
"""File endings of those formats: what restore, evaluate and archive take from folders and prefixes."""
PHOTO_EXTENSIONS = tuple(ext for ext in READABLE_EXTENSIONS if ext != ".gif")
"""Training data's endings: a GIF holds at most 256 colours, banding no clean photograph has, so it
would teach the model its palette as ground truth."""

OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF"}
DEEP_FORMATS = ("PNG", "TIFF")
"""Output formats that hold 16-bit samples; JPEG and WebP hold 8 bits, so a 16-bit input written as
one of them is quantised to 8 bits (its profile and EXIF are still written)."""

# Pillow reads 16-bit colour PNGs and TIFFs into 8-bit modes, keeping only the high byte of each
# sample. Decoding the same stream again with the opposite byte order's unpacker keeps the low byte
# instead (PNG's unfilter and TIFF's decompression and predictor work on whole samples before the
# unpacker, identical in both passes), so hi * 256 + lo gives back the exact 16-bit samples.
_NATIVE = "L" if sys.byteorder == "little" else "B"
_DEEP_LOW_BYTE_RAWMODES = {
    f"{mode};16{order}": f"{mode};16{swapped}"
    for mode in ("RGB", "RGBA")
    for order, swapped in (("B", "L"), ("L", "B"), ("N", "B" if _NATIVE == "L" else "L"))
}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIGNATURES = (
    (0, _PNG_SIGNATURE, "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (8, b"WEBP", "WEBP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"BM", "BMP"),
    (0, b"GIF8", "GIF"),
)
_UNSUPPORTED_SIGNATURES = (
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (0, b"%PDF", "PDF"),
    (0, b"8BPS", "PSD"),
)


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image within the limits; the message says why."""


@dataclass
class DecodedImage:
    """Pixels of one file, upright (EXIF orientation applied), in [0, 1]."""

    rgb: np.ndarray  # float32 (H, W, 3) in [0, 1]
    alpha: np.ndarray | None  # float32 (H, W) in [0, 1], None when the file has no transparency
    source_mode: str  # Pillow mode of the file as stored: "RGB", "CMYK", "I;16", "P", "LA", ...
    source_format: str  # "PNG", "JPEG", "WEBP", "TIFF", "BMP" or "GIF"
    bit_depth: int  # 8, or 16 where the samples carry more than 8 bits (16-bit PNG/TIFF, float TIFF)
    metadata: ImageMetadata = ImageMetadata()  # RGB ICC profile and EXIF as stored (orientation included)

    def __post_init__(self) -> None:
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError(f"rgb must be (H, W, 3), got shape {self.rgb.shape}")
        if self.alpha is not None and self.alpha.shape != self.rgb.shape[:2]:
            raise ValueError(f"alpha shape {self.alpha.shape} does not match rgb {self.rgb.shape[:2]}")

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    @property
    def height(self) -> int:
        return self.rgb.shape[0]


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_side: int = DEFAULT_MAX_SIDE) -> DecodedImage:
    """Decode PNG/JPEG/WebP/TIFF/BMP/GIF bytes (first frame only) into float32 arrays in [0, 1].

    Raises `ImageDecodeError` for empty, truncated, corrupt, non-image, too large
    (width*height > `max_pixels`) or absurdly shaped (a side > `max_side`) input.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"decode_image takes bytes, got {type(data).__name__}")
    data = bytes(data)
    if max_pixels < 1 or max_side < 1:
        raise ValueError(f"max_pixels and max_side must be positive, got {max_pixels}, {max_side}")
    if not data:
        raise ImageDecodeError("zero bytes: the file is empty")

    with _open_header(data, max_pixels) as image:
        fmt = "JPEG" if image.format == "MPO" else str(image.format)  # MPO: a camera JPEG
        _check_size(*image.size, max_pixels=max_pixels, max_side=max_side)
        deep_rawmode = _deep_rawmode(image)
        _load_pixels(image, fmt, data)
        source_mode = image.mode
        metadata = read_metadata(image)  # before the orientation is applied (and dropped)
        upright = _apply_exif_orientation(image)
        samples, scale = _samples(upright)
        transparency = upright.info.get("transparency")
        if deep_rawmode is not None:
            samples = _deep_samples(data, fmt, deep_rawmode, high_bytes=samples)
            scale = 65535
    decoded = _to_float(samples, scale, transparency, source_mode, fmt)
    decoded.metadata = metadata
    return decoded


def encode_image(rgb: np.ndarray, *, alpha: np.ndarray | None = None, fmt: str = "png",
                 quality: int = 95, bit_depth: int = 8, metadata: ImageMetadata | None = None) -> bytes:
    """Encode float (H, W, 3) `rgb` (clamped to [0, 1]) as png, jpg/jpeg, webp or tif/tiff bytes;
    uint8 `rgb` is taken as 8-bit levels and uint16 `rgb` as 16-bit levels (what quantize_to_uint8
    and quantize_to_uint16 of those floats give).

    `alpha` (H, W) in [0, 1] is written as an RGBA image for png, webp and tiff and dropped for jpg,
    which has no alpha channel. `quality` (1..100) applies to jpg and webp. `bit_depth` 16 writes
    16-bit samples where the format holds them (DEEP_FORMATS) and 8-bit ones elsewhere.
    `metadata`: its ICC profile is embedded as it is, its EXIF as `output_exif` makes it for this
    size (no orientation tag: the pixels are upright).
    """
    pil_format = OUTPUT_FORMATS.get(str(fmt).lower())
    if pil_format is None:
        raise ValueError(f"unsupported output format {fmt!r}; expected one of png, jpg, jpeg, webp, tif, tiff")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"rgb must be a non-empty (H, W, 3) array, got shape {rgb.shape}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"alpha must be (H, W) = {rgb.shape[:2]}, got shape {alpha.shape}")
        if pil_format == "JPEG":
            alpha = None
    metadata = metadata or ImageMetadata()
    icc_profile, exif = metadata.icc_profile, output_exif(metadata.exif, rgb.shape[1], rgb.shape[0])
    if bit_depth == 16 and pil_format in DEEP_FORMATS:
        levels = _levels16(rgb, alpha)
        writer = write_png16 if pil_format == "PNG" else write_tiff16
        return writer(levels, icc_profile=icc_profile, exif=exif)
    pixels = _levels8(rgb)
    if alpha is not None:
        pixels = np.concatenate([pixels, quantize_to_uint8(alpha)[..., None]], axis=2)
    options = {"quality": quality} if pil_format in ("JPEG", "WEBP") else {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if exif:
        options["exif"] = exif
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def _levels8(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    if rgb.dtype == np.uint16:
        return quantize_to_uint8(rgb.astype(np.float32) / np.float32(65535))
    return quantize_to_uint8(rgb)


def _levels16(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    if rgb.dtype == np.uint8:
        levels = rgb.astype(np.uint16) * np.uint16(257)  # 8-bit levels exactly: 255 → 65535
    else:
        levels = rgb if rgb.dtype == np.uint16 else quantize_to_uint16(rgb)
    if alpha is None:
        return levels
    return np.concatenate([levels, quantize_to_uint16(alpha)[..., None]], axis=2)


def quantize_to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats to bytes as the official UGPNet writer does: uint8(clip(x*255 + 0.5, 0, 255)).

    The cast truncates, and after the clip everything is non-negative, so this is floor(x*255 + 0.5):
    halves round up, unlike np.round. The arithmetic stays in the input's float precision (float32
    tensors quantise exactly as the official float32 code); NaN becomes 0.
    """
    return _quantize(x, np.uint8)


def quantize_to_uint16(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats to 16-bit levels by the same rule: floor(clip(x) * 65535 + 0.5); NaN becomes 0."""
    return _quantize(x, np.uint16)


def _quantize(x: np.ndarray, dtype) -> np.ndarray:
    values = np.asarray(x)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    elif values.dtype.itemsize < 4:
        values = values.astype(np.float32)
    values = np.where(np.isnan(values), values.dtype.type(0), values)  # a NaN cast to an integer is undefined
    return quantize_levels(values, np.iinfo(dtype).max).astype(dtype)


def quantize_levels(x, top: int = 255):
    """The project's one rounding rule from [0, 1] floats to integer levels 0…`top` (255: 8 bits), the
    official UGPNet writer's: floor(clip(x*top + 0.5, 0, top)). Halves round up (np.round and
    torch.round round them to even); values outside [0, 1] clip.

    `x` is a numpy array or a torch tensor (this module imports no torch); the levels come back as
    floats of the same kind and precision, NaN staying NaN. Files written, degraded inputs, baselines'
    outputs and the metrics all round through here, so a PSNR measured in memory is the PSNR of the
    files. The official validation is documented only as "PSNR on uint8-rounded images" (reference §5)
    and no conformance fixture depends on how halves round, so the writer's rule serves the metrics too.
    """
    scaled = (x * top + 0.5).clip(0, top)
    return np.floor(scaled) if isinstance(scaled, np.ndarray | np.generic) else scaled.floor()


def resize_alpha(alpha: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an (H, W) alpha plane in [0, 1] to (height, width) with bicubic filtering.

    Done in float ("F" mode) so the plane keeps its precision; bicubic overshoots at hard edges,
    hence the clamp back to [0, 1].
    """
    plane = np.asarray(alpha, dtype=np.float32)
    if plane.ndim != 2:
        raise ValueError(f"alpha must be (H, W), got shape {plane.shape}")
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    resized = Image.fromarray(np.ascontiguousarray(plane)).resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    """Image.open reads only the header; every way it fails becomes an ImageDecodeError."""
    try:
        return Image.open(io.BytesIO(data), formats=_READABLE_FORMATS)
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(_bomb_message(data, str(err), max_pixels)) from err
    except Image.UnidentifiedImageError as err:
        raise ImageDecodeError(_unidentified_message(data)) from err
    except Exception as err:  # Pillow plugins raise OSError, ValueError, struct.error, ...
        fmt = _sniff_format(data) or "image"
        raise ImageDecodeError(f"{_damage(err, fmt, data)} {fmt} header: {err}") from err


def _check_size(width: int, height: int, *, max_pixels: int, max_side: int) -> None:
    if width < 1 or height < 1:
        raise ImageDecodeError(f"zero-size image {width}x{height}")
    if max(width, height) > max_side:
        raise ImageDecodeError(f"absurd size {width}x{height}: a side exceeds the limit of {max_side}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"decompression bomb: {width}x{height} = {_pixel_count(width * height)} exceeds the limit "
            f"of {_pixel_count(max_pixels)}")


def _load_pixels(image: Image.Image, fmt: str, data: bytes) -> None:
    """Decode every pixel now, so that a truncated or corrupt body fails here and not later."""
    try:
        image.load()
    except Exception as err:  # OSError, SyntaxError, EOFError, zlib.error, MemoryError, ...
        raise ImageDecodeError(f"{_damage(err, fmt, data)} {fmt} file: {err}") from err


def _damage(err: Exception, fmt: str, data: bytes) -> str:
    """'truncated' when the bytes ran out (the commonest archive fault), else 'corrupt'."""
    truncated = "truncated" in str(err).lower() or isinstance(err, EOFError | struct.error)
    return "truncated" if truncated or (fmt == "WEBP" and _riff_is_short(data)) else "corrupt"


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        # Unreadable EXIF: show the pixels as stored, which is what browsers do, rather than
        # reject a photo whose pixels decoded fine.
        return image


def _deep_rawmode(image: Image.Image) -> str | None:
    """The raw mode of a 16-bit RGB(A) PNG or TIFF, whose samples Pillow would cut to 8 bits; else None."""
    if image.format not in DEEP_FORMATS or not image.tile:
        return None
    rawmode = _tile_rawmode(image.tile[0])
    return rawmode if rawmode in _DEEP_LOW_BYTE_RAWMODES else None


def _tile_rawmode(tile) -> str | None:
    """A tile's raw mode: PNG tiles carry it as their argument, TIFF tiles first in an argument tuple."""
    args = tile[3]
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return rawmode if isinstance(rawmode, str) else None


def _with_rawmode(tile, rawmode: str):
    args = tile[3]
    args = (rawmode, *args[1:]) if isinstance(args, tuple) else rawmode
    return tile._replace(args=args) if hasattr(tile, "_replace") else (*tile[:3], args)


def _samples(image: Image.Image) -> tuple[np.ndarray, int]:
    """(H, W, C) samples with C = 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA), and their full scale.

    Float ("F") images come back as float32 with scale 1.
    """
    mode = image.mode
    if mode == "F":
        return np.asarray(image, dtype=np.float32)[..., None], 1
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        samples = np.asarray(image)
        if mode == "I" and samples.size and (samples.min() < 0 or samples.max() > 65535):
            raise ImageDecodeError("32-bit integer samples outside the 16-bit range are not supported")
        return samples.astype(np.uint16)[..., None], 65535
    if mode in ("L", "LA", "RGB", "RGBA"):
        converted = image
    elif mode == "1":
        converted = image.convert("L")
    else:  # P, PA, CMYK, YCbCr, LAB, RGBX, premultiplied modes: Pillow knows their colours
        converted = image.convert("RGBA" if image.has_transparency_data else "RGB")
    samples = np.asarray(converted)
    return (samples[..., None] if samples.ndim == 2 else samples), 255


def _deep_samples(data: bytes, fmt: str, rawmode: str, high_bytes: np.ndarray) -> np.ndarray:
    """Exact 16-bit samples of a 16-bit RGB(A) PNG or TIFF whose high bytes Pillow already decoded."""
    try:
        with Image.open(io.BytesIO(data), formats=(fmt,)) as image:
            image.tile = [_with_rawmode(tile, _DEEP_LOW_BYTE_RAWMODES[rawmode]) for tile in image.tile]
            image.load()
            low_bytes = np.asarray(_apply_exif_orientation(image))
    except Exception as err:
        raise ImageDecodeError(f"corrupt 16-bit {fmt}: could not re-read the low bytes: {err}") from err
    if low_bytes.shape != high_bytes.shape:
        raise ImageDecodeError(
            f"corrupt 16-bit {fmt}: the two passes disagree ({low_bytes.shape} vs {high_bytes.shape})")
    return high_bytes.astype(np.uint16) * 256 + low_bytes


def _to_float(samples: np.ndarray, scale: int, transparency: object, source_mode: str,
              fmt: str) -> DecodedImage:
    channels = samples.shape[2]
    colour = samples[..., : 3 if channels >= 3 else 1]
    if channels in (2, 4):
        alpha = samples[..., -1].astype(np.float32) / np.float32(scale)
    else:
        alpha = _alpha_from_colour_key(colour, transparency)
    rgb = colour.astype(np.float32)
    if scale == 1:  # float TIFF: no fixed scale; clamp into range, NaN counts as black
        rgb = np.clip(np.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    else:
        rgb /= np.float32(scale)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    bit_depth = 8 if scale == 255 else 16
    return DecodedImage(rgb=rgb, alpha=alpha, source_mode=source_mode, source_format=fmt, bit_depth=bit_depth)


def _alpha_from_colour_key(colour: np.ndarray, transparency: object) -> np.ndarray | None:
    """PNG tRNS for grey/RGB images names one colour that is fully transparent."""
    channels = colour.shape[2]
    if channels == 1 and isinstance(transparency, int):
        key = (transparency,)
    elif channels == 3 and isinstance(transparency, tuple) and len(transparency) == 3:
        key = transparency
    else:
        return None
    if not np.issubdtype(colour.dtype, np.integer):
        return None
    return np.any(colour != np.asarray(key, dtype=colour.dtype), axis=2).astype(np.float32)


def _pixel_count(pixels: int) -> str:
    return f"{pixels} px" if pixels < 1_000_000 else f"{pixels / 1e6:.4g} Mpx"


def _bomb_message(data: bytes, pillow_message: str, max_pixels: int) -> str:
    """Pillow refused the header before we saw the size; say as much as we can about it."""
    size = _png_header_size(data)
    match = re.search(r"\((\d+) pixels\)", pillow_message)
    pixels = size[0] * size[1] if size else int(match[1]) if match else None
    if pixels is None:
        return f"decompression bomb: {pillow_message}"
    described = f"{size[0]}x{size[1]} = {_pixel_count(pixels)}" if size else _pixel_count(pixels)
    if pixels > max_pixels:
        return f"decompression bomb: {described} exceeds the limit of {_pixel_count(max_pixels)}"
    return (f"decompression bomb: {described} exceeds Pillow's own hard limit (twice "
            f"PIL.Image.MAX_IMAGE_PIXELS), which max_pixels={max_pixels} cannot lift")


def _png_header_size(data: bytes) -> tuple[int, int] | None:
    if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    return None


def _sniff_format(data: bytes) -> str | None:
    for offset, signature, name in _SIGNATURES:
        if data[offset:offset + len(signature)] == signature:
            return name
    return None


def _unidentified_message(data: bytes) -> str:
    # Says what the bytes look like, never what they say: the message lands in manifests and logs,
    # and the file may be anyone's text (a note, a key file) misnamed as an image.
    head = data[:1024]
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if _looks_like_text(head, text):
        lowered = text.lower()
        if lowered.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in lowered:
            return f"not an image (looks like HTML/text, {len(data)} bytes)"
        if lowered.startswith(("<?xml", "<svg")):
            return f"not an image (looks like XML/SVG text, {len(data)} bytes)"
        return f"not an image (looks like text, {len(data)} bytes)"
    for offset, signature, name in _UNSUPPORTED_SIGNATURES:
        if data[offset:offset + len(signature)] == signature:
            return f"unsupported image format {name}; readable formats are {', '.join(_READABLE_FORMATS)}"
    size = _png_header_size(data)
    if size is not None and 0 in size:
        return f"zero-size image {size[0]}x{size[1]}"
    known = _sniff_format(data)
    if known is not None:
        return f"corrupt or truncated {known} header ({len(data)} bytes)"
    return f"not an image (unrecognised bytes, {len(data)} bytes)"


def _looks_like_text(head: bytes, text: str) -> bool:
    if not text or b"\x00" in head:
        return False
    odd = sum(1 for char in text if char == "\ufffd" or not (char.isprintable() or char.isspace()))
    return odd <= len(text) // 50


def _riff_is_short(data: bytes) -> bool:
    """A RIFF (WebP) header states the file length; fewer bytes than that means truncation."""
    return len(data) >= 8 and data[:4] == b"RIFF" and struct.unpack("<I", data[4:8])[0] + 8 > len(data)
