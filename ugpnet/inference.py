"""How a model runs on a device: numeric precision (autocast), host→device copies, and which batch
size to run at. Pure torch; the pipelines' model actors and the benchmarks share these rules.

Precision names what the forward pass computes in; inputs and outputs stay float32 in [0,1].
- `fp32`: the reference computation, the default everywhere.
- `bf16`: autocast to bfloat16; runs on CPU (AVX-512 BF16 / AMX) and CUDA. Its measured distance to
  fp32 on the conformance inputs is in docs/precision.md.
- `fp16`: autocast to float16; CUDA only (CPU autocast in fp16 is slow and not what users want).
"""

import contextlib
import time
from collections.abc import Callable, Iterable

import torch

from ugpnet.images import quantize_levels

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
BATCH_CANDIDATES = (1, 2, 4, 8, 16)


class PrecisionError(ValueError):
    """A precision this device cannot run."""


def check_precision(precision: str, device_type: str) -> None:
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device_type != "cuda":
        raise PrecisionError(f"precision fp16 runs only on CUDA, not on {device_type}; use bf16 or fp32")


def autocast(precision: str, device: torch.device):
    """The context a forward pass runs in: nothing for fp32, torch.autocast otherwise."""
    check_precision(precision, device.type)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


class HostToDevice:
    """Copies host arrays to the device. On CUDA through one pinned staging buffer per input slot,
    reused across batches (pinning is expensive; allocating it per batch would cost more than the copy),
    with a non-blocking copy. On CPU the tensor is the array's own memory: no copy at all."""

    def __init__(self, device: torch.device):
        self.device = device
        self._staging: dict[int, torch.Tensor] = {}

    @property
    def pins(self) -> bool:
        return self.device.type == "cuda"

    def __call__(self, array, slot: int = 0) -> torch.Tensor:
        host = torch.as_tensor(array)
        if not self.pins:
            return host.to(self.device)
        buffer = self._staging.get(slot)
        if buffer is None or buffer.numel() < host.numel() or buffer.dtype != host.dtype:
            buffer = torch.empty(host.numel(), dtype=host.dtype).pin_memory()
            self._staging[slot] = buffer
        # The previous non-blocking copy out of this buffer must finish before it is overwritten.
        torch.cuda.current_stream(self.device).synchronize()
        staged = buffer[:host.numel()].view(host.shape)
        staged.copy_(host)
        return staged.to(self.device, non_blocking=True)


# ---------------------------------------------------------------- batch policy

def pick_batch_size(seconds_per_image: dict[int, float]) -> int:
    """The batch size with the least time per image. Batch 1 must be among the measured ones and wins
    ties, so the pick is never slower per image than batch 1."""
    if 1 not in seconds_per_image:
        raise ValueError("the timings must include batch size 1, the baseline every pick is held to")
    return min(sorted(seconds_per_image), key=lambda size: (seconds_per_image[size], size))


def measure_batch_sizes(forward_at: Callable[[int], object], device: torch.device,
                        candidates: Iterable[int] = BATCH_CANDIDATES, planned_images: int = 1000,
                        budget_fraction: float = 0.05, max_budget_s: float = 60.0,
                        repeats: int = 3) -> dict[int, float]:
    """Seconds per image of `forward_at(size)` (one forward pass at that batch size) at candidate sizes,
    in increasing order. `planned_images` counts the model's inputs the run will give it (tiles, when
    images are tiled). Batch 1 first, a warm-up call (allocation, kernel choice: seconds on a first call)
    then a timed one, whose time sizes the budget: `budget_fraction` of the planned work, at most
    `max_budget_s`. A larger size is tried (one warm-up, one timed call) only while its estimated cost
    fits in what is left of the budget, and the search stops at the first size slower per image than the
    best so far. Each size is timed up to `repeats` times while the budget allows, and keeps its fastest
    call: actors starting together measure on a busy machine, where one call of each size picked batch 1
    (20 % slower per tile than 2-8 at 128² on one thread). Call under torch.inference_mode() and the
    run's autocast."""
    forward_at(1)
    started = time.perf_counter()
    timings = {1: _timed(forward_at, 1, device)}
    budget = min(max_budget_s, budget_fraction * planned_images * timings[1])

    def fits(cost: float) -> bool:
        return time.perf_counter() - started + cost <= budget

    for _ in range(repeats - 1):
        if not fits(timings[1]):
            break
        timings[1] = min(timings[1], _timed(forward_at, 1, device))
    for size in sorted(set(candidates) - {1}):
        best = min(timings.values())
        if not fits(2 * size * best):
            break
        try:
            forward_at(size)  # warm-up at this shape
            timed = _timed(forward_at, size, device) / size
            for _ in range(repeats - 1):
                if not fits(size * best):
                    break
                timed = min(timed, _timed(forward_at, size, device) / size)
        except torch.OutOfMemoryError:  # this size does not fit the device: the sizes measured so far do
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
        timings[size] = timed
        if timed > best:
            break
    return timings


def random_inputs(shapes: Iterable[tuple[int, ...]], device: torch.device) -> list[torch.Tensor]:
    """Seeded uniform [0,1] tensors of `shapes` on `device`: stand-ins for real batches when timing."""
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(shape, generator=generator).to(device) for shape in shapes]


def _timed(forward_at, size: int, device: torch.device) -> float:
    _synchronize(device)
    started = time.perf_counter()
    forward_at(size)
    _synchronize(device)
    return time.perf_counter() - started


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- precision tolerance

def eight_bit_distance(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """How far `candidate` is from `reference` once both are written as 8-bit images (what a user
    gets): relative L2 of the 0–255 levels, the largest difference in levels, and the share of values
    more than 2 levels apart (the largest difference alone is one pixel's story)."""
    ref = quantize_levels(reference.float()).double()
    got = quantize_levels(candidate.float()).double()
    difference = (got - ref).abs()
    return {"relative_l2": float((got - ref).norm() / ref.norm().clamp_min(1e-12)),
            "max_abs_levels": float(difference.max()),
            "share_over_2_levels": float((difference > 2).double().mean())}
