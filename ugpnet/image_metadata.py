"""What a photo carries besides its pixels, kept for its restored output: the ICC colour profile and
the EXIF (camera, date, GPS, rights).

Archive masters are replaced by their outputs only if the outputs still say what the masters said.
Two things must change on the way, and nothing else:

- the orientation tag goes: decoding already turned the pixels upright, so a kept tag would turn
  them a second time in every viewer;
- the EXIF image size (PixelXDimension/PixelYDimension) becomes the output's size.

Tags that describe how the *input file* stored its pixels (a TIFF's strip offsets, compression,
bits per sample, the thumbnail's offsets) are dropped too: the output file states its own.
"""

from dataclasses import dataclass

from PIL import ExifTags, Image

_ORIENTATION = ExifTags.Base.Orientation
_PIXEL_X = ExifTags.Base.ExifImageWidth    # PixelXDimension, in the Exif sub-IFD
_PIXEL_Y = ExifTags.Base.ExifImageHeight   # PixelYDimension

# Tags of a TIFF's first directory (which Pillow reports as the file's EXIF) that describe the
# stored pixels rather than the photo; copied to another file they would describe nothing, or lie.
_STORAGE_TAGS = frozenset({
    254, 255,                      # NewSubfileType, SubfileType
    256, 257, 258, 259, 262,       # width, length, bits per sample, compression, photometric
    266, 273, 277, 278, 279,       # fill order, strip offsets, samples per pixel, rows per strip, strip bytes
    284, 317, 320, 322, 323,       # planar configuration, predictor, colour map, tile width, tile length
    324, 325, 338, 339, 340, 341,  # tile offsets, tile bytes, extra samples, sample format, min/max sample
    347, 513, 514,                 # JPEG tables, thumbnail offset and length
    530, 531, 532,                 # YCbCr subsampling, positioning, reference black/white
    34675,                         # the ICC profile: carried on its own (ImageMetadata.icc_profile)
})

# An ICC profile's header names its data colour space in bytes 16..20. Outputs are RGB, so only an
# RGB profile still describes them; a CMYK or grey one (from a CMYK JPEG or a grey scan, converted
# to RGB on decoding) would make colour-managed viewers misread every pixel.
_ICC_COLOUR_SPACE = slice(16, 20)
_RGB_COLOUR_SPACE = b"RGB "


@dataclass(frozen=True)
class ImageMetadata:
    """Profile and EXIF of one input, as bytes that travel in a row; b"" where the input had none."""

    icc_profile: bytes = b""  # an RGB ICC profile
    exif: bytes = b""         # Pillow's Exif.tobytes(): b"Exif\\0\\0" and a TIFF-structured block


def read_metadata(image: Image.Image) -> ImageMetadata:
    """The profile and EXIF of an opened, loaded image, before any orientation is applied.

    Unreadable EXIF is left out rather than failing the image: the pixels decoded fine, and a
    photo without its EXIF is still a photo (what browsers show too).
    """
    return ImageMetadata(icc_profile=rgb_icc_profile(image.info.get("icc_profile")), exif=_exif_bytes(image))


def rgb_icc_profile(profile: object) -> bytes:
    """`profile` when it is an RGB ICC profile, else b"" (see _RGB_COLOUR_SPACE)."""
    if not isinstance(profile, bytes | bytearray) or len(profile) < 128:
        return b""
    return bytes(profile) if profile[_ICC_COLOUR_SPACE] == _RGB_COLOUR_SPACE else b""


def output_exif(exif: bytes, width: int, height: int) -> bytes:
    """The EXIF for an output of `width` x `height`: orientation and storage tags dropped, the image
    size updated where the EXIF states one; b"" when nothing is left or `exif` cannot be read."""
    if not exif:
        return b""
    parsed = Image.Exif()
    try:
        parsed.load(exif)
        # Sub-directories are read (from the offsets in the main one) before that one changes.
        photo = parsed.get_ifd(ExifTags.IFD.Exif) if ExifTags.IFD.Exif in parsed else {}
        if ExifTags.IFD.GPSInfo in parsed:
            parsed.get_ifd(ExifTags.IFD.GPSInfo)
    except Exception:  # Pillow's parsers raise struct.error, ValueError, KeyError, ... on damage
        return b""
    for tag in (_ORIENTATION, *_STORAGE_TAGS):
        parsed.pop(tag, None)
    if photo:
        photo[_PIXEL_X], photo[_PIXEL_Y] = int(width), int(height)
    if not len(parsed) and not photo:
        return b""
    return parsed.tobytes()


def exif_directories(exif: bytes) -> tuple[dict, dict, dict]:
    """(main tags, Exif sub-IFD, GPS sub-IFD) of `exif` as plain dicts, for writers that build their
    own TIFF directory (see ugpnet.deep_writers)."""
    parsed = Image.Exif()
    parsed.load(exif)
    photo = dict(parsed.get_ifd(ExifTags.IFD.Exif)) if ExifTags.IFD.Exif in parsed else {}
    photo.pop(ExifTags.IFD.Interop, None)  # an offset into the source block: meaningless here
    gps = dict(parsed.get_ifd(ExifTags.IFD.GPSInfo)) if ExifTags.IFD.GPSInfo in parsed else {}
    main = {tag: value for tag, value in parsed.items()
            if tag not in (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo)}
    return main, photo, gps


def _exif_bytes(image: Image.Image) -> bytes:
    try:
        exif = image.getexif()
        if not len(exif):
            return b""
        for directory in (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo):
            if directory in exif:
                exif.get_ifd(directory)
        return exif.tobytes()
    except Exception:  # damaged EXIF: see read_metadata
        return b""
