"""Fit policies: run a model that accepts one fixed square size on an image of any size.

UGPNet's generative prior is a StyleGAN2 of a fixed resolution, so the whole network takes exactly
`input_size`×`input_size` pixels and returns `scale` times that. The model is passed in as a plain
callable `forward(batch (N,3,s,s)) -> (N,3,s*scale,s*scale)`; nothing here knows about its layers.

- `error`:  refuse anything but the exact size (the honest choice for benchmarks).
- `resize`: shrink/enlarge the whole image to fit (aspect kept, padded), run once, resize back.
            Cheap and global, but detail is lost when the image is much larger than the model.
- `tile`:   run overlapping native-size tiles and blend them; keeps full resolution.

Value range: tensors are float RGB in [0,1] throughout; only the uint8 writer leaves that range.
Accumulation is float32 on the input's device; results come back in the input's dtype.
"""

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

FIT_POLICIES = ("resize", "tile", "error")

# Floor for blending weights: a Hann ramp reaches ~0 at its end, and a pixel whose weights summed to
# zero would divide by zero. Small enough not to disturb the blend where another tile is at weight 1.
MIN_BLEND_WEIGHT = 1e-3

Forward = Callable[[torch.Tensor], torch.Tensor]


class FitError(ValueError):
    """The image cannot be given to the model under the chosen fit policy."""


def fit_and_run(image: torch.Tensor, forward: Forward, *, input_size: int, scale: int, policy: str,
                batch_size: int = 4, tile_overlap: int | None = None, out_channels: int = 3) -> torch.Tensor:
    """Restore an image of any size with a fixed-size model.

    `out_channels` lets a model return several RGB images stacked on channels (e.g. restored,
    synthesized and fused: 9), which are then fitted together.

    image: (3,H,W) or (B,3,H,W) in [0,1]; the result has the same leading dims and is
    (…,3,H*scale,W*scale). tile_overlap is in input pixels (default input_size//4).
    """
    if policy not in FIT_POLICIES:
        raise ValueError(f"unknown fit policy {policy!r}; choose one of {FIT_POLICIES}")
    if input_size < 1 or scale < 1 or batch_size < 1:
        raise ValueError(f"input_size, scale and batch_size must be >= 1, "
                         f"got {input_size}, {scale}, {batch_size}")
    unbatched = image.dim() == 3
    images = image.unsqueeze(0) if unbatched else image
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected an RGB image (3,H,W) or (B,3,H,W), got shape {tuple(image.shape)}")

    def checked(batch):
        return _checked_forward(forward, batch, scale, out_channels)

    restored = []
    for single in images.split(1):
        if policy == "error":
            restored.append(_run_exact(single, checked, input_size=input_size, scale=scale))
        elif policy == "resize":
            restored.append(_run_resized(single, checked, input_size=input_size, scale=scale))
        else:
            overlap = input_size // 4 if tile_overlap is None else tile_overlap
            restored.append(_run_tiled(single, checked, input_size=input_size, scale=scale,
                                       batch_size=batch_size, tile_overlap=overlap, channels=out_channels))
    result = torch.cat(restored)
    return result.squeeze(0) if unbatched else result


def _checked_forward(forward: Forward, batch: torch.Tensor, scale: int, channels: int = 3) -> torch.Tensor:
    """Call the model and hold it to its contract, so a wrong scale fails here, not as a bad crop."""
    restored = forward(batch)
    n, _, size, _ = batch.shape
    expected = (n, channels, size * scale, size * scale)
    if tuple(restored.shape) != expected:
        raise RuntimeError(f"model returned shape {tuple(restored.shape)} for input {tuple(batch.shape)}; "
                           f"expected {expected} (scale {scale})")
    return restored


def _run_exact(image: torch.Tensor, forward: Forward, *, input_size: int, scale: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    if height != input_size or width != input_size:
        raise FitError(f"input is {width}×{height} (W×H) but this model takes exactly "
                       f"{input_size}×{input_size} (use fit policy 'resize' or 'tile')")
    return forward(image)


def _resample(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic resize that stays in [0,1].

    antialias=True low-passes when shrinking (plain bicubic aliases badly at 3000→64); the clamp
    removes bicubic overshoot, which would otherwise leave [0,1]."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    resized = F.interpolate(image, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return resized.clamp(0.0, 1.0)


def _pad_axis(image: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    if before == 0 and after == 0:
        return image
    # Reflection keeps texture statistics at the border (less edge artefact from the model) but needs
    # the pad to be shorter than the image; a 1-px-high strip can only be replicated.
    mode = "reflect" if max(before, after) < image.shape[dim] else "replicate"
    pad = (0, 0, before, after) if dim == -2 else (before, after, 0, 0)
    return F.pad(image, pad, mode=mode)


def _pad_centred(image: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int, int]:
    """Pad (1,3,h,w) to at least (height,width), centred; returns the image and its top/left offset."""
    extra_h = max(0, height - image.shape[-2])
    extra_w = max(0, width - image.shape[-1])
    top, left = extra_h // 2, extra_w // 2
    padded = _pad_axis(image, top, extra_h - top, dim=-2)
    padded = _pad_axis(padded, left, extra_w - left, dim=-1)
    return padded, top, left


def _run_resized(image: torch.Tensor, forward: Forward, *, input_size: int, scale: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    # Longer side → input_size; the short side may round to 0 for a 1×3000 strip, so keep ≥ 1 px.
    shrink = input_size / max(height, width)
    fitted_h = min(input_size, max(1, round(height * shrink)))
    fitted_w = min(input_size, max(1, round(width * shrink)))
    fitted = _resample(image, fitted_h, fitted_w)
    padded, top, left = _pad_centred(fitted, input_size, input_size)

    restored = forward(padded)
    content = restored[..., top * scale:(top + fitted_h) * scale, left * scale:(left + fitted_w) * scale]
    return _resample(content, height * scale, width * scale)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced tile starts along one axis: first at 0, last ending exactly at `length`,
    neighbours overlapping by at least `overlap` (length >= tile)."""
    if length == tile:
        return [0]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _blend_ramp(before: int, after: int, size: int, *, device: torch.device) -> torch.Tensor:
    """1-D blend weight for one tile: Hann ramps over the overlaps with its neighbours, 1 elsewhere.

    A rising sin² ramp and its mirror over the same pixels sum to exactly 1, so two overlapping tiles
    cross-fade with no kink; at the image border (no neighbour) the weight stays 1."""
    weight = torch.ones(size, dtype=torch.float32, device=device)
    for ramp_len, at_start in ((before, True), (after, False)):
        if ramp_len == 0:
            continue
        phase = (torch.arange(ramp_len, dtype=torch.float32, device=device) + 0.5) / ramp_len
        rising = torch.sin(phase * (math.pi / 2)) ** 2
        if at_start:
            weight[:ramp_len] = torch.minimum(weight[:ramp_len], rising)
        else:
            weight[size - ramp_len:] = torch.minimum(weight[size - ramp_len:], rising.flip(0))
    return weight.clamp_min(MIN_BLEND_WEIGHT)


def _axis_ramps(starts: list[int], tile: int, scale: int, device: torch.device) -> list[torch.Tensor]:
    """One output-resolution ramp per tile, each sized to that tile's actual overlaps."""
    ramps = []
    for index, start in enumerate(starts):
        before = starts[index - 1] + tile - start if index > 0 else 0
        after = start + tile - starts[index + 1] if index + 1 < len(starts) else 0
        ramps.append(_blend_ramp(before * scale, after * scale, tile * scale, device=device))
    return ramps


def _summed_ramps(starts: list[int], ramps: list[torch.Tensor], length: int, scale: int) -> torch.Tensor:
    """Total 1-D blend weight along one axis (output pixels)."""
    total = torch.zeros(length, dtype=torch.float32, device=ramps[0].device)
    for start, ramp in zip(starts, ramps, strict=True):
        total[start * scale:start * scale + ramp.numel()] += ramp
    return total


def _run_tiled(image: torch.Tensor, forward: Forward, *, input_size: int, scale: int, batch_size: int,
               tile_overlap: int, channels: int = 3) -> torch.Tensor:
    if not 0 <= tile_overlap < input_size:
        raise ValueError(f"tile_overlap must be in [0, {input_size}), got {tile_overlap}")
    height, width = image.shape[-2:]
    padded, top, left = _pad_centred(image, input_size, input_size)
    padded_h, padded_w = padded.shape[-2:]
    starts_y = _tile_starts(padded_h, input_size, tile_overlap)
    starts_x = _tile_starts(padded_w, input_size, tile_overlap)
    ramps_y = _axis_ramps(starts_y, input_size, scale, image.device)
    ramps_x = _axis_ramps(starts_x, input_size, scale, image.device)

    # The tiles form a grid and each window is a product of per-axis ramps, so the summed weight
    # is the product of the per-axis sums: one output-sized weight buffer, no per-tile adds to it.
    weight_sum = _summed_ramps(starts_y, ramps_y, padded_h * scale, scale)[:, None] \
        * _summed_ramps(starts_x, ramps_x, padded_w * scale, scale)[None, :]
    # One output-sized float32 accumulator; tiles are added in and dropped batch by batch.
    out_tile = input_size * scale
    blended = torch.zeros(channels, padded_h * scale, padded_w * scale, dtype=torch.float32, device=image.device)
    grid = [(iy, ix) for iy in range(len(starts_y)) for ix in range(len(starts_x))]
    for first in range(0, len(grid), batch_size):
        chunk = grid[first:first + batch_size]
        batch = torch.cat([padded[..., starts_y[iy]:starts_y[iy] + input_size,
                                  starts_x[ix]:starts_x[ix] + input_size] for iy, ix in chunk])
        restored = forward(batch).float()
        for (iy, ix), tile in zip(chunk, restored, strict=True):
            window = ramps_y[iy][:, None] * ramps_x[ix][None, :]
            y0, x0 = starts_y[iy] * scale, starts_x[ix] * scale
            blended[:, y0:y0 + out_tile, x0:x0 + out_tile].addcmul_(tile, window)

    normalised = blended.div_(weight_sum)  # in place: no second output-sized buffer
    cropped = normalised[:, top * scale:(top + height) * scale, left * scale:(left + width) * scale]
    return cropped.unsqueeze(0).to(image.dtype)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit PIL image (any mode) → (1,3,H,W) float32 in [0,1]. 16-bit sources are the caller's job."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return numpy_to_tensor(rgb)


def numpy_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H,W,3) float array in [0,1] → (1,3,H,W) float32."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H,W,3) array, got shape {rgb.shape}")
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    """(3,H,W) or (1,3,H,W) tensor → (H,W,3) float32 array, values untouched (not clamped)."""
    chw = t.squeeze(0) if t.dim() == 4 else t
    if chw.dim() != 3 or chw.shape[0] != 3:
        raise ValueError(f"expected (3,H,W) or (1,3,H,W), got shape {tuple(t.shape)}")
    return chw.detach().to("cpu", torch.float32).permute(1, 2, 0).numpy()


def tensor_to_pil(t: torch.Tensor) -> Image.Image:
    """[0,1] tensor → 8-bit RGB PIL image, quantised as the official UGPNet writer does:
    uint8(clip(x*255 + 0.5, 0, 255)), i.e. round half up, out-of-range values clipped."""
    rgb = tensor_to_numpy(t)
    quantised = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(quantised)  # (H,W,3) uint8 is RGB
