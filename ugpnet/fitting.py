"""Fit policies: run a model that accepts one fixed square size on an image of any size.

UGPNet's generative prior is a StyleGAN2 of a fixed resolution, so the whole network takes exactly
`input_size`×`input_size` pixels and returns `scale` times that. The model is passed in as a plain
callable `forward(batch (N,3,s,s)) -> (N,3,s*scale,s*scale)`; nothing here knows about its layers.

- `error`:  refuse anything but the exact size (the honest choice for benchmarks).
- `resize`: shrink/enlarge the whole image to fit (aspect kept, padded), run once, resize back.
            Cheap and global, but detail is lost when the image is much larger than the model.
- `tile`:   run overlapping native-size tiles and blend them; keeps full resolution.

A fit is three steps, so that a pipeline can run the cheap geometry on CPU workers and send only
model-size tensors to the (GPU) model: `plan_fit` (sizes only) → `cut_tiles` (the model inputs) →
model → `FitAssembler` (blend the outputs back). `fit_and_run` chains them in one process.

Value range: tensors are float RGB in [0,1] throughout; only the uint8 writer leaves that range.
Accumulation is float32 on the input's device; results come back in the input's dtype.
"""

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ugpnet.images import quantize_to_uint8

FIT_POLICIES = ("resize", "tile", "error")

# Floor for blending weights: a Hann ramp reaches ~0 at its end, and a pixel whose weights summed to
# zero would divide by zero. Small enough not to disturb the blend where another tile is at weight 1.
MIN_BLEND_WEIGHT = 1e-3

Forward = Callable[[torch.Tensor], torch.Tensor]


class FitError(ValueError):
    """The image cannot be given to the model under the chosen fit policy."""


@dataclass(frozen=True)
class FitPlan:
    """Where each model-size tile comes from in an image, and how the outputs go back. Sizes are in
    input pixels; outputs are `scale` times larger.

    The image (height×width) is first resampled to fitted_h×fitted_w (only `resize` changes the size),
    then padded to a canvas_h×canvas_w canvas with its top-left corner at (top, left); tiles of
    input_size² start at every (starts_y[i], starts_x[j]) of the canvas, row-major.
    """

    policy: str
    height: int
    width: int
    input_size: int
    scale: int
    fitted_h: int
    fitted_w: int
    canvas_h: int
    canvas_w: int
    top: int
    left: int
    starts_y: tuple[int, ...]
    starts_x: tuple[int, ...]

    @property
    def num_tiles(self) -> int:
        return len(self.starts_y) * len(self.starts_x)

    @property
    def tile_origins(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.starts_y for x in self.starts_x]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "FitPlan":
        data = json.loads(text)
        data["starts_y"], data["starts_x"] = tuple(data["starts_y"]), tuple(data["starts_x"])
        return cls(**data)


def plan_fit(height: int, width: int, *, input_size: int, scale: int, policy: str,
             tile_overlap: int | None = None) -> FitPlan:
    """The geometry of fitting a height×width image to the model; no pixels are touched.

    Raises FitError under `error` when the size is not exactly input_size². tile_overlap is in input
    pixels (default input_size//4) and only matters for `tile`.
    """
    if policy not in FIT_POLICIES:
        raise ValueError(f"unknown fit policy {policy!r}; choose one of {FIT_POLICIES}")
    if input_size < 1 or scale < 1:
        raise ValueError(f"input_size and scale must be >= 1, got {input_size}, {scale}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {width}×{height} (W×H)")
    whole = dict(policy=policy, height=height, width=width, input_size=input_size, scale=scale)
    if policy == "error":
        if height != input_size or width != input_size:
            raise FitError(f"input is {width}×{height} (W×H) but this model takes exactly "
                           f"{input_size}×{input_size} (use fit policy 'resize' or 'tile')")
        return FitPlan(**whole, fitted_h=height, fitted_w=width, canvas_h=height, canvas_w=width,
                       top=0, left=0, starts_y=(0,), starts_x=(0,))
    if policy == "resize":
        # Longer side → input_size; the short side may round to 0 for a 1×3000 strip, so keep ≥ 1 px.
        shrink = input_size / max(height, width)
        fitted_h = min(input_size, max(1, round(height * shrink)))
        fitted_w = min(input_size, max(1, round(width * shrink)))
        top, left = (input_size - fitted_h) // 2, (input_size - fitted_w) // 2
        return FitPlan(**whole, fitted_h=fitted_h, fitted_w=fitted_w, canvas_h=input_size,
                       canvas_w=input_size, top=top, left=left, starts_y=(0,), starts_x=(0,))
    overlap = input_size // 4 if tile_overlap is None else tile_overlap
    if not 0 <= overlap < input_size:
        raise ValueError(f"tile_overlap must be in [0, {input_size}), got {overlap}")
    canvas_h, canvas_w = max(height, input_size), max(width, input_size)
    return FitPlan(**whole, fitted_h=height, fitted_w=width, canvas_h=canvas_h, canvas_w=canvas_w,
                   top=(canvas_h - height) // 2, left=(canvas_w - width) // 2,
                   starts_y=tuple(_tile_starts(canvas_h, input_size, overlap)),
                   starts_x=tuple(_tile_starts(canvas_w, input_size, overlap)))


def prepare_canvas(image: torch.Tensor, plan: FitPlan) -> torch.Tensor:
    """(1,3,H,W) image → the (1,3,canvas_h,canvas_w) canvas the tiles are cut from."""
    if tuple(image.shape[-2:]) != (plan.height, plan.width):
        raise ValueError(f"image is {tuple(image.shape[-2:])} but the plan is for {(plan.height, plan.width)}")
    fitted = _resample(image, plan.fitted_h, plan.fitted_w)
    canvas = _pad_axis(fitted, plan.top, plan.canvas_h - plan.fitted_h - plan.top, dim=-2)
    return _pad_axis(canvas, plan.left, plan.canvas_w - plan.fitted_w - plan.left, dim=-1)


def cut_tiles(canvas: torch.Tensor, plan: FitPlan, first: int = 0, count: int | None = None) -> torch.Tensor:
    """Tiles first..first+count-1 (row-major) of the canvas as one (n,3,s,s) batch."""
    origins = plan.tile_origins[first:None if count is None else first + count]
    size = plan.input_size
    return torch.cat([canvas[..., y:y + size, x:x + size] for y, x in origins])


class FitAssembler:
    """Blends model outputs for a plan's tiles back into one (1,C,H*scale,W*scale) image.

    Tiles may arrive in chunks (`add`), so a large image never needs all its outputs at once:
    one output-sized float32 accumulator is the only big buffer.
    """

    def __init__(self, plan: FitPlan, *, channels: int = 3, device: torch.device | str = "cpu"):
        self.plan, self.channels, self.device = plan, channels, torch.device(device)
        self._added = 0
        self._single: torch.Tensor | None = None
        if plan.policy == "tile":
            k, s = plan.scale, plan.input_size
            self._ramps_y = _axis_ramps(list(plan.starts_y), s, k, self.device)
            self._ramps_x = _axis_ramps(list(plan.starts_x), s, k, self.device)
            self._blended = torch.zeros(channels, plan.canvas_h * k, plan.canvas_w * k, dtype=torch.float32,
                                        device=self.device)

    def add(self, outputs: torch.Tensor) -> None:
        """Outputs (n,C,s*scale,s*scale) for the next n tiles, in plan order."""
        plan = self.plan
        out_tile = plan.input_size * plan.scale
        expected = (self.channels, out_tile, out_tile)
        if outputs.dim() != 4 or tuple(outputs.shape[1:]) != expected:
            raise ValueError(f"tile outputs must be (n,{self.channels},{out_tile},{out_tile}), "
                             f"got {tuple(outputs.shape)}")
        if self._added + len(outputs) > plan.num_tiles:
            raise ValueError(f"got {self._added + len(outputs)} tile outputs for a plan of {plan.num_tiles}")
        if plan.policy != "tile":
            self._single = outputs
        else:
            origins = plan.tile_origins
            cols = len(plan.starts_x)
            for offset, tile in enumerate(outputs.float()):
                index = self._added + offset
                iy, ix = divmod(index, cols)
                y0, x0 = origins[index][0] * plan.scale, origins[index][1] * plan.scale
                window = self._ramps_y[iy][:, None] * self._ramps_x[ix][None, :]
                self._blended[:, y0:y0 + out_tile, x0:x0 + out_tile].addcmul_(tile, window)
        self._added += len(outputs)

    def result(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        plan = self.plan
        if self._added != plan.num_tiles:
            raise ValueError(f"only {self._added} of {plan.num_tiles} tile outputs were added")
        k = plan.scale
        if plan.policy != "tile":
            content = self._single[..., plan.top * k:(plan.top + plan.fitted_h) * k,
                                   plan.left * k:(plan.left + plan.fitted_w) * k]
            return _resample(content, plan.height * k, plan.width * k).to(dtype)
        # The tiles form a grid and each window is a product of per-axis ramps, so the summed weight
        # is the product of the per-axis sums: one output-sized weight buffer, no per-tile adds to it.
        weight_sum = _summed_ramps(list(plan.starts_y), self._ramps_y, plan.canvas_h * k, k)[:, None] \
            * _summed_ramps(list(plan.starts_x), self._ramps_x, plan.canvas_w * k, k)[None, :]
        normalised = self._blended.div_(weight_sum)  # in place: no second output-sized buffer
        cropped = normalised[:, plan.top * k:(plan.top + plan.height) * k, plan.left * k:(plan.left + plan.width) * k]
        return cropped.unsqueeze(0).to(dtype)


def assemble(outputs: torch.Tensor, plan: FitPlan, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All of a plan's tile outputs (N,C,S,S) → the (1,C,H*scale,W*scale) image."""
    assembler = FitAssembler(plan, channels=outputs.shape[1], device=outputs.device)
    assembler.add(outputs)
    return assembler.result(dtype)


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

    restored = []
    for single in images.split(1):
        plan = plan_fit(single.shape[-2], single.shape[-1], input_size=input_size, scale=scale, policy=policy,
                        tile_overlap=tile_overlap)
        canvas = prepare_canvas(single, plan)
        assembler = FitAssembler(plan, channels=out_channels, device=single.device)
        for first in range(0, plan.num_tiles, batch_size):
            batch = cut_tiles(canvas, plan, first, batch_size)
            assembler.add(_checked_forward(forward, batch, scale, out_channels))
        restored.append(assembler.result(single.dtype))
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
    """[0,1] tensor → 8-bit RGB PIL image, quantised as the official UGPNet writer does
    (ugpnet.images.quantize_to_uint8: round half up, out-of-range values clipped)."""
    return Image.fromarray(quantize_to_uint8(tensor_to_numpy(t)))  # (H,W,3) uint8 is RGB
