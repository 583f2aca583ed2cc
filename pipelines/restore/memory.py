"""How much memory one image needs in each stage of `ugpnet restore`, estimated on the driver from
the image's header (its size) and the model's geometry, before any pixel is decoded.

Why: at ×8 super-resolution a 3000×2000 photo becomes a 24000×16000 output, 4.6 GB per float32
copy, and the stages make several copies. Reserving Ray memory from these estimates lets the
scheduler place work where it fits; an image whose estimate exceeds what one task may reserve is
refused at planning as one error row that gives the numbers, instead of being killed mid-run.

Units: bytes. The copies counted below are the ones the stages make today (see
pipelines/restore/stages.py); tests/test_restore_memory_units.py holds them to measured peaks.
Fused mode streams the tiles (the rows carry the canvas in and the assembled image out: one chunk
of tiles exists at a time); split mode carries tile sets between its pools, which is counted too.
"""

import io
import math
from dataclasses import dataclass

import numpy as np

from ugpnet.fitting import plan_fit

FLOAT = 4  # bytes per float32 sample
GiB = 1 << 30
HEADER_BYTES = 1 << 18  # enough of a file for Pillow to read its size (JPEG EXIF included)
# Per model actor, whatever the model: the interpreter, torch, Ray and the blocks in flight.
# Measured: a CPU actor of a tiny preset peaks near 650 MiB.
ACTOR_BASE_MEMORY = 700 << 20
ACTOR_WEIGHT_COPIES = 3  # the payload bytes, the loaded state dict, the module
# Live feature maps of one forward pass, per output pixel of a tile and per feature channel
# (F_R and the generator's last maps, in inference mode): a measured upper bound, see the tests.
ACTIVATION_MAPS = 6


@dataclass(frozen=True)
class ModelGeometry:
    """What the estimates need to know of the model."""

    input_size: int           # the square side the model takes, in pixels
    scale: int
    feature_channels: int     # F_R + F_G channels: the widest maps at output resolution
    weights_bytes: int
    restoration_channels: int = 0  # F_R alone (split mode ships it across two pool boundaries)


@dataclass(frozen=True)
class ImageMemory:
    """Peak bytes one image needs in each stage (its own share, not the process's base)."""

    width: int
    height: int
    out_width: int
    out_height: int
    tiles: int
    decode: int               # read + decode + fit task, while the image is worked on
    held: int                 # what its row carries between stages (canvas or image; split: tile sets)
    model: int                # its share of a model actor's batch: inputs and outputs in flight
    encode: int               # assemble + encode + write task

    @property
    def largest(self) -> tuple[str, int]:
        return max((("decode", self.decode), ("model", self.model), ("encode", self.encode)), key=lambda x: x[1])


def estimate_image(width: int, height: int, *, geometry: ModelGeometry, fit: str, tile_overlap: int | None,
                   file_bytes: int, outputs: int = 1, stages: str = "fused") -> ImageMemory:
    """Peak bytes per stage for a width×height image; `outputs` is 3 with save_intermediate;
    `stages` is the restore's stage mode (fused streams tiles, split ships tile sets)."""
    s, k = geometry.input_size, geometry.scale
    plan = plan_fit(height, width, input_size=s, scale=k, policy="resize" if fit == "error" else fit,
                    tile_overlap=tile_overlap)
    # An EXIF rotation swaps the sides after the header was read: count the worse of both.
    turned = plan_fit(width, height, input_size=s, scale=k, policy=plan.policy, tile_overlap=tile_overlap)
    tiles = max(plan.num_tiles, turned.num_tiles)
    pixels = width * height
    canvas = plan.canvas_h * plan.canvas_w if plan.policy == "tile" else s * s
    tiles_in = tiles * 3 * s * s * FLOAT
    tiles_out = tiles * 3 * (s * k) ** 2 * FLOAT * outputs
    out_pixels = pixels * k * k
    out_canvas = (canvas if plan.policy == "tile" else pixels) * k * k
    # Decode: the file, Pillow's 8-bit planes (RGBA at most), the float RGB and its conversion
    # temporary, the alpha plane, two padded canvases, what the row ships and its serialised copy.
    decoded = (file_bytes + pixels * 4 + pixels * 3 * FLOAT * 2 + pixels * FLOAT
               + max(canvas, pixels) * 3 * FLOAT * 2)
    if stages == "fused":
        return _fused_estimate(width, height, k, tiles, decoded, canvas * 3 * FLOAT, out_pixels, out_canvas, outputs)
    decode = decoded + tiles_in * 2
    # Model: the tiles as received and stacked; the outputs as chunks, concatenated, serialised.
    model = tiles_in * 2 + tiles_out * 3
    # Encode: the outputs as received and copied; the blend accumulator (3 channels) and weights;
    # then per output file the clipped floats, the scaled floats, the bytes, Pillow's copy and the
    # encoded file; an alpha plane resized in floats.
    encode = (tiles_out * 2 + out_canvas * (3 * FLOAT + FLOAT)
              + out_pixels * (3 * FLOAT * 2 + 3 * 3) + out_pixels * FLOAT * 2)
    return ImageMemory(width=width, height=height, out_width=width * k, out_height=height * k, tiles=tiles,
                       decode=decode, held=tiles_in, model=model, encode=encode)


def _fused_estimate(width: int, height: int, k: int, tiles: int, decoded: int, canvas_in: int, out_pixels: int,
                    out_canvas: int, outputs: int) -> ImageMemory:
    """Fused mode: the row carries the canvas to the model actor and the assembled image(s) back."""
    image_out = out_pixels * 3 * FLOAT * outputs
    # Model: the canvas as received; per output column a blend accumulator (3 channels) and its
    # weights while the image's tiles stream in; the finished images and their serialised copy.
    # (One chunk of tiles in flight is the actor's, counted in actor_memory's activations.)
    model = canvas_in + out_canvas * (3 * FLOAT + FLOAT) * outputs + image_out * 2
    # Encode: the images as received, one float32 copy; per output file the clipped floats, the scaled
    # floats, the bytes, Pillow's copy and the encoded file; an alpha plane resized in floats.
    encode = image_out + out_pixels * 3 * FLOAT + out_pixels * (3 * FLOAT * 2 + 3 * 3) + out_pixels * FLOAT * 2
    return ImageMemory(width=width, height=height, out_width=width * k, out_height=height * k, tiles=tiles,
                       decode=decoded + canvas_in * 2, held=max(canvas_in, image_out), model=model, encode=encode)


def actor_memory(geometry: ModelGeometry, batch_size: int, largest_model_share: int) -> int:
    """A model actor's reservation: its base, the weights' copies, one forward pass's activations
    (batch_size tiles) and the batch of images it holds (batch_size rows, the largest ones)."""
    out_tile = (geometry.input_size * geometry.scale) ** 2
    activations = batch_size * out_tile * geometry.feature_channels * FLOAT * ACTIVATION_MAPS
    return (ACTOR_BASE_MEMORY + ACTOR_WEIGHT_COPIES * geometry.weights_bytes + activations
            + batch_size * largest_model_share)


def refusal(image: ImageMemory, budget: int, geometry: ModelGeometry) -> str | None:
    """The error of an image over the budget, naming its numbers; None when it fits."""
    stage, peak = image.largest
    need = peak + image.held  # the row's own tiles stay held while a stage works on it
    if need <= budget:
        return None
    return (f"memory: {image.width}x{image.height} -> {image.out_width}x{image.out_height} (x{geometry.scale}, "
            f"{image.tiles} tile(s)) needs an estimated {need / GiB:.2f} GiB in the {stage} stage, over the "
            f"budget of {budget / GiB:.2f} GiB one task may reserve (max_image_memory, or what the largest "
            f"Ray node has beside the model actors)")


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the start of an image file; None when Pillow cannot tell from it."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # a bad or truncated header: the decode stage reports it properly
        return None


def block_reservation(images: list[ImageMemory], key: str) -> int:
    """What one CPU task holding these images needs: the rows it carries plus the largest transient."""
    if not images:
        return 0
    held = sum(image.held for image in images)
    return held + max(getattr(image, key) for image in images)


def rounded(value: float) -> int:
    """Reservations in whole MiB: Ray rounds memory requests anyway, and logs read better."""
    return int(math.ceil(value / (1 << 20))) << 20


def model_geometry(preset, weights_bytes: int) -> ModelGeometry:
    """From a ugpnet Preset (as the bundle's config describes it)."""
    from ugpnet.archs.stylegan2 import stylegan_channels

    generator = preset.generator
    synthesis_channels = stylegan_channels(generator.channel_multiplier, generator.narrow)[generator.out_size]
    return ModelGeometry(input_size=preset.input_size, scale=preset.scale,
                         feature_channels=preset.restoration_feature_channels + synthesis_channels,
                         weights_bytes=weights_bytes, restoration_channels=preset.restoration_feature_channels)


def shipped_bytes(plan, geometry: ModelGeometry, transport: str, stages: str) -> int:
    """Bytes of the arrays one image's row carries across the stage boundaries (what the object
    store holds for it), without intermediates, from its FitPlan: fused mode ships the canvas and
    the assembled image; split mode the tile set, then per tile the restored image and F_R, then
    F_R, F_G and the synthesized image, then the fused tile. The shapes are fixed by the plan, so
    this is exact (tests/test_restore_memory_units.py compares it with the real stages' arrays)."""
    from pipelines.restore.stages import SPLIT_OUTPUT_DTYPE, assembled_dtype, tile_dtype

    def size(dtype) -> int:
        return int(np.dtype(dtype).itemsize)

    k, s = plan.scale, plan.input_size
    if stages == "fused":
        return 3 * (plan.canvas_h * plan.canvas_w * size(tile_dtype(transport))
                    + plan.height * plan.width * k * k * size(assembled_dtype(transport)))
    out_tile = (s * k) ** 2
    f_r, f_g = geometry.restoration_channels, geometry.feature_channels - geometry.restoration_channels
    rgb = 3 * size(SPLIT_OUTPUT_DTYPE)  # the restored, synthesized and fused tiles
    per_tile = 3 * s * s * size(tile_dtype(transport)) + out_tile * (3 * rgb + (2 * f_r + f_g) * FLOAT)
    return plan.num_tiles * per_tile
