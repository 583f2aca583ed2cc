"""16-bit RGB(A) PNG and TIFF files, which Pillow cannot write (it has no 16-bit colour mode).

Both writers take the 16-bit levels themselves, (H, W, 3) or (H, W, 4) uint16, and the metadata
to embed: an ICC profile and EXIF bytes as ugpnet.image_metadata.output_exif gives them.

PNG: IHDR, iCCP, eXIf, one IDAT, IEND (PNG 1.2 + the 2017 eXIf extension), every row with filter 0;
samples big-endian, as PNG stores them.
TIFF: little-endian baseline RGB, one Deflate strip, the ICC profile in tag 34675, the EXIF's main
tags in the image directory with its Exif and GPS sub-directories (what cameras and Pillow write).
"""

import struct
import zlib

import numpy as np
from PIL import TiffImagePlugin, TiffTags

from ugpnet.image_metadata import exif_directories

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {3: 2, 4: 6}  # channels → PNG colour type: truecolour, truecolour with alpha
_EXIF_HEADER = b"Exif\x00\x00"  # JPEG's APP1 prefix, which PNG's eXIf chunk leaves out
_ZLIB_LEVEL = 6

_TIFF_HEADER = b"II*\x00"
_TIFF_DEFLATE = 8  # Adobe Deflate: zlib, what libtiff and Pillow read
_TIFF_RGB = 2
_TIFF_UNASSOCIATED_ALPHA = 2
_TIFF_ICC = 34675


def write_png16(levels: np.ndarray, *, icc_profile: bytes = b"", exif: bytes = b"") -> bytes:
    """A 16-bit PNG of `levels` (H, W, 3 or 4) uint16."""
    height, width, channels = _checked(levels)
    chunks = [_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, _PNG_COLOUR_TYPES[channels], 0, 0, 0))]
    if icc_profile:
        # iCCP: profile name, NUL, compression method 0 (zlib), the compressed profile.
        chunks.append(_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile, _ZLIB_LEVEL)))
    if exif:
        chunks.append(_chunk(b"eXIf", exif.removeprefix(_EXIF_HEADER)))
    rows = np.ascontiguousarray(levels, dtype=">u2").view(np.uint8).reshape(height, width * channels * 2)
    filtered = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter type 0 per row
    chunks.append(_chunk(b"IDAT", zlib.compress(filtered.tobytes(), _ZLIB_LEVEL)))
    chunks.append(_chunk(b"IEND", b""))
    return _PNG_SIGNATURE + b"".join(chunks)


def write_tiff16(levels: np.ndarray, *, icc_profile: bytes = b"", exif: bytes = b"") -> bytes:
    """A 16-bit TIFF of `levels` (H, W, 3 or 4) uint16: header, directory, then the strip."""
    height, width, channels = _checked(levels)
    strip = zlib.compress(np.ascontiguousarray(levels, dtype="<u2").tobytes(), _ZLIB_LEVEL)
    directory = TiffImagePlugin.ImageFileDirectory_v2()
    if exif:
        main, photo, gps = exif_directories(exif)
        for tag, value in main.items():
            directory[tag] = value
        if photo:
            directory[TiffImagePlugin.EXIFIFD] = photo
        if gps:
            directory[0x8825] = gps
    _set(directory, 256, width, TiffTags.LONG)
    _set(directory, 257, height, TiffTags.LONG)
    _set(directory, 258, (16,) * channels, TiffTags.SHORT)
    _set(directory, 259, _TIFF_DEFLATE, TiffTags.SHORT)
    _set(directory, 262, _TIFF_RGB, TiffTags.SHORT)
    # Pillow's directory writer counts a strip offset from the end of the directory and its data,
    # where the strip goes: 0 is the strip right after them.
    _set(directory, 273, 0, TiffTags.LONG)
    _set(directory, 277, channels, TiffTags.SHORT)
    _set(directory, 278, height, TiffTags.LONG)
    _set(directory, 279, len(strip), TiffTags.LONG)
    _set(directory, 284, 1, TiffTags.SHORT)  # chunky: RGBRGB...
    if channels == 4:
        _set(directory, 338, _TIFF_UNASSOCIATED_ALPHA, TiffTags.SHORT)
    if icc_profile:
        _set(directory, _TIFF_ICC, icc_profile, TiffTags.UNDEFINED)
    directory_offset = len(_TIFF_HEADER) + 4
    return _TIFF_HEADER + struct.pack("<I", directory_offset) + directory.tobytes(directory_offset) + strip


def _checked(levels: np.ndarray) -> tuple[int, int, int]:
    if levels.dtype != np.uint16 or levels.ndim != 3 or levels.shape[2] not in _PNG_COLOUR_TYPES \
            or 0 in levels.shape:
        raise ValueError(f"16-bit writers take non-empty (H, W, 3|4) uint16 levels, got {levels.dtype} "
                         f"{levels.shape}")
    return levels.shape


def _set(directory: TiffImagePlugin.ImageFileDirectory_v2, tag: int, value, tag_type: int) -> None:
    directory.tagtype[tag] = tag_type
    directory[tag] = value


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
