"""Input files for the restore tests: ordinary photos, unusual-but-valid images and bad files.

Everything is made here with Pillow or by hand (16-bit PNG, a PNG header that claims 1.6 Gpx), so
no test data is committed. Each valid sample knows its upright size and whether it has alpha.
"""

import functools
import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Sample:
    name: str                 # relative key, e.g. "a/b/photo.jpg"
    data: bytes
    upright_size: tuple[int, int] | None = None  # (width, height) after EXIF orientation; None for bad files
    has_alpha: bool = False
    reason: str = ""          # for bad files: a substring of the expected error


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _pattern(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth ramps plus a little noise: JPEG-friendly and asymmetric (flips and rotations show)."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    planes = [x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) * 255 // max(1, width + height - 2)]
    rgb = np.stack(planes, axis=2).astype(np.int32) + rng.integers(-12, 13, size=(height, width, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def photo(width: int, height: int, seed: int = 0, fmt: str = "JPEG") -> bytes:
    return _save(Image.fromarray(_pattern(width, height, seed)), fmt, **({"quality": 92} if fmt == "JPEG" else {}))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def png16_rgb(width: int, height: int) -> bytes:
    """16-bit RGB PNG (Pillow cannot write one), filter type 0 on every row."""
    samples = (_pattern(width, height, 5).astype(np.uint16) * 257).astype(">u2")
    rows = b"".join(b"\x00" + samples[row].tobytes() for row in range(height))
    return _png(width, height, 16, 2, zlib.compress(rows))


@functools.cache
def srgb_profile() -> bytes:
    """A real RGB ICC profile (Pillow's littleCMS builds sRGB), as archive scans carry; built once,
    since its header holds the second it was made in."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def camera_exif(width: int, height: int, orientation: int = 6) -> Image.Exif:
    """EXIF as a camera writes it: model, capture date, orientation, the image size, a copyright."""
    exif = Image.Exif()
    exif[0x0110] = "UGPNet TestCam 1"       # Model
    exif[0x8298] = "(c) The Archive"        # Copyright
    exif[0x0112] = orientation
    photo_ifd = exif.get_ifd(0x8769)
    photo_ifd[0x9003] = "2021:06:05 14:30:00"  # DateTimeOriginal
    photo_ifd[0xA002], photo_ifd[0xA003] = width, height  # PixelXDimension, PixelYDimension
    return exif


def png16_with_profile_and_exif(stored_width: int, stored_height: int) -> tuple[bytes, np.ndarray]:
    """A 16-bit RGB PNG with an sRGB iCCP chunk and an eXIf chunk (orientation 6), built by hand;
    returns the bytes and the stored (H, W, 3) uint16 samples, which use all 16 bits."""
    y, x = np.mgrid[0:stored_height, 0:stored_width]
    samples = np.stack([x * 65535 // max(1, stored_width - 1), y * 65535 // max(1, stored_height - 1),
                        (x * 7919 + y * 104729) % 65536], axis=2).astype(np.uint16)
    rows = b"".join(b"\x00" + samples[row].astype(">u2").tobytes() for row in range(stored_height))
    header = struct.pack(">IIBBBBB", stored_width, stored_height, 16, 2, 0, 0, 0)
    exif = camera_exif(stored_width, stored_height).tobytes()[len(b"Exif\x00\x00"):]
    chunks = (_png_chunk(b"IHDR", header) + _png_chunk(b"iCCP", b"sRGB\x00\x00" + zlib.compress(srgb_profile()))
              + _png_chunk(b"eXIf", exif) + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + chunks, samples


def exif_rotated_jpeg(stored_width: int, stored_height: int) -> bytes:
    """Stored landscape with EXIF orientation 6 (rotate 90° clockwise to view): upright it is portrait."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(_pattern(stored_width, stored_height, 7)), "JPEG", quality=92, exif=exif.tobytes())


def rgba_png(width: int, height: int) -> bytes:
    rgb = _pattern(width, height, 9)
    y, x = np.mgrid[0:height, 0:width]
    alpha = (20 + x * 235 // max(1, width - 1)).astype(np.uint8)  # never 0: colour stays defined
    return _save(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG")


def good_samples() -> list[Sample]:
    cmyk = Image.fromarray(_pattern(40, 30, 3)).convert("CMYK")
    grey = Image.fromarray(_pattern(50, 40, 4)[..., 0], "L")
    palette = Image.fromarray(_pattern(36, 28, 6)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return [
        Sample("photos/a/beach.jpg", photo(96, 72, 1), (96, 72)),
        Sample("photos/a/b/portrait.png", photo(60, 90, 2, fmt="PNG"), (60, 90)),
        Sample("odd/one_pixel.png", photo(1, 1, 3, fmt="PNG"), (1, 1)),
        Sample("odd/strip.png", photo(600, 3, 4, fmt="PNG"), (600, 3)),
        Sample("odd/cmyk.jpg", _save(cmyk, "JPEG", quality=92), (40, 30)),
        Sample("odd/deep16.png", png16_rgb(33, 21), (33, 21)),
        Sample("odd/grey.png", _save(grey, "PNG"), (50, 40)),
        Sample("odd/palette.png", _save(palette, "PNG"), (36, 28)),
        Sample("odd/alpha.png", rgba_png(48, 32), (48, 32), has_alpha=True),
        Sample("odd/rotated.jpg", exif_rotated_jpeg(40, 24), (24, 40)),
    ]


def bad_samples() -> list[Sample]:
    png = photo(64, 48, 11, fmt="PNG")
    jpeg = photo(64, 48, 12)
    return [
        Sample("bad/truncated_png.png", png[: len(png) // 2], reason="truncated PNG"),
        Sample("bad/truncated_jpeg.jpg", jpeg[: len(jpeg) // 2], reason="truncated JPEG"),
        Sample("bad/empty.jpg", b"", reason="zero bytes"),
        Sample("bad/note.jpg", b"this is a shopping list, not a photo\n" * 8, reason="looks like text"),
        Sample("bad/error_page.png", b"<!DOCTYPE html>\n<html><body>503 Service Unavailable</body></html>",
               reason="HTML"),
        Sample("bad/bomb.png", _png(40000, 40000, 8, 2, zlib.compress(b"\0" * 64)), reason="decompression bomb"),
    ]
