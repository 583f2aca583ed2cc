"""How a model actor runs its module: device, precision, host→device copies, batch size and
compilation, decided once when the actor starts. The rules themselves live in `ugpnet.inference` and
`ugpnet.compiled` (pure torch); this joins them to an actor's settings and logs what it chose.
"""

import logging
import os
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Rows (images) per Ray Data batch handed to a model actor when the batch size is measured: enough for
# the largest batch the policy may pick on that device (tiles of one image can fill more).
AUTO_ROWS_PER_CALL = {"cpu": 4, "cuda": 8}
GPU_BATCH_CANDIDATES = (1, 2, 4, 8, 16)
# On CPU a batch pays only while it stays small in pixels: at 512² batch 4 already costs more per image
# than batch 1 (issue 11: 10.5 s vs 6.9 s), while a 64² model runs 1.5-5x faster per image at 16 than
# at 1 (per-call overheads dominate small tiles). So the CPU candidates go up to 16 tiles, but only
# while a batch holds at most four 512² tiles' worth of pixels: 512² keeps (1, 2, 4) as before.
CPU_MAX_BATCH = 16
CPU_BATCH_PIXELS = 4 * 512 * 512
COMPILE_CACHE_FOLDER = "inductor"  # in the node's ugpnet.model_refs.cache_dir() when no compile_cache_dir is set


def cpu_batch_candidates(input_size: int) -> tuple[int, ...]:
    """Batch sizes a CPU actor measures for square tiles of `input_size`: 1, 2, 4, ... up to
    CPU_MAX_BATCH, while a batch holds at most CPU_BATCH_PIXELS pixels (1 always)."""
    sizes, size = [1], 2
    while size <= CPU_MAX_BATCH and size * input_size * input_size <= CPU_BATCH_PIXELS:
        sizes.append(size)
        size *= 2
    return tuple(sizes)


def batch_candidates(device_type: str, input_size: int) -> tuple[int, ...]:
    """The sizes an actor's start-up measurement tries on that device for the model's input size."""
    return GPU_BATCH_CANDIDATES if device_type == "cuda" else cpu_batch_candidates(input_size)


def auto_rows_per_call(device_type: str, input_size: int) -> int:
    """Images per model call when the batch is measured. On CPU: at least 4, and enough one-tile
    images to fill the largest batch the measurement may pick. On a GPU: 8 (tiles of one image can
    fill more)."""
    if device_type == "cuda":
        return AUTO_ROWS_PER_CALL["cuda"]
    return max(AUTO_ROWS_PER_CALL["cpu"], max(cpu_batch_candidates(input_size)))


@dataclass(frozen=True)
class ExecutionSettings:
    """Picklable; what the driver tells every model actor about how to run."""

    precision: str = "fp32"            # fp32 | bf16 | fp16 (fp16: CUDA only)
    compile: str = "off"               # off | on | auto (auto: when the planned work amortises it)
    compile_cache_dir: str = ""        # inductor's persistent cache; "" → COMPILE_CACHE_FOLDER in the cache dir
    batch_size: int | None = None      # tiles per forward pass; None: measured at start-up
    planned_tiles: int = 1000          # model inputs (tiles) each actor will run: sizes the start-up measurements


class ModuleRunner:
    """Runs one module (`fused` or one of restoration/synthesis/fusion) of a built model on numpy
    batches: copies in (pinned, non-blocking on CUDA), forward under the precision's autocast, float32
    numpy out. `batch_size` is the one chosen for this actor."""

    def __init__(self, model, module: str, device, execution: ExecutionSettings, input_shapes,
                 keep_intermediate: bool = False):
        from ugpnet.inference import HostToDevice, check_precision

        check_precision(execution.precision, device.type)
        self.model, self.module, self.device, self.execution = model, module, device, execution
        self.copy_in = HostToDevice(device)
        self.target = {"fused": model, "restoration": model.resmodule, "synthesis": model.synmodule,
                       "fusion": model.fusmodule}[module]
        self.input_shapes = input_shapes  # per input, without the batch dimension
        self.keep_intermediate = keep_intermediate  # fused: also return restored and synthesized
        self.batch_size = execution.batch_size or self._measured_batch_size()
        if self._wants_compile():
            self._compile()

    def run(self, *arrays, unpack=None, out_dtypes=None) -> list:
        """Numpy inputs (N,...) → the module's outputs as numpy arrays. Call under inference_mode.
        `unpack` widens each received tensor on the device (compact transport: uint16 tiles, so a GPU
        copy moves 2 bytes a sample); `out_dtypes` (torch dtypes, one per output; default float32) are
        applied on the device before the copy back."""
        import torch

        inputs = [self.copy_in(array, slot) for slot, array in enumerate(arrays)]
        if unpack is not None:
            inputs = [unpack(tensor) for tensor in inputs]
        outputs = self._forward(*inputs)
        dtypes = out_dtypes or [torch.float32] * len(outputs)
        return [output.to(dtype).cpu().numpy() for output, dtype in zip(outputs, dtypes, strict=True)]

    def _forward(self, *inputs):
        from ugpnet.inference import autocast

        with autocast(self.execution.precision, self.device):
            if self.module == "fused":
                result = self.target(*inputs, return_all=True)
                if not self.keep_intermediate:  # only what is kept is copied back to the host
                    return (result.fused,)
                return result.fused, result.restored, result.synthesized
            if self.module == "synthesis":
                return self.target(*inputs, randomize_noise=self.model.randomize_noise)
            if self.module == "fusion":
                return (self.target(*inputs),)
            return self.target(*inputs)

    # ------------------------------------------------------------ start-up decisions

    def _samples(self, size: int):
        from ugpnet.inference import random_inputs

        return random_inputs([(size, *shape) for shape in self.input_shapes], self.device)

    def _measured_batch_size(self) -> int:
        import torch

        from ugpnet.inference import measure_batch_sizes, pick_batch_size

        candidates = batch_candidates(self.device.type, self.model.input_size)
        samples = self._samples(max(candidates))
        with torch.inference_mode():
            timings = measure_batch_sizes(lambda size: self._forward(*(s[:size] for s in samples)), self.device,
                                          candidates, planned_images=self.execution.planned_tiles)
        chosen = pick_batch_size(timings)
        self.seconds_per_image = timings[chosen]
        log.info("model actor %s on %s (%s): batch %d from s/image %s", self.module, self.device,
                 self.execution.precision, chosen, {k: round(v, 4) for k, v in timings.items()})
        return chosen

    def _wants_compile(self) -> bool:
        from ugpnet.compiled import CompileRecords, should_compile, use_cache_dir
        from ugpnet.model_refs import cache_dir

        if self.execution.compile == "off":
            return False
        self.cache_dir = use_cache_dir(self.execution.compile_cache_dir or cache_dir() / COMPILE_CACHE_FOLDER)
        self.record_key = (f"{self.model.preset.name}|{self.module}|{self.device.type}|{self.execution.precision}"
                           f"|b{self.batch_size}")
        record = CompileRecords(self.cache_dir).get(self.record_key, self.device.type)
        if not hasattr(self, "seconds_per_image"):
            self.seconds_per_image = self._time_call(self.batch_size, warm=True) / self.batch_size
        decided = should_compile(self.execution.compile, self.execution.planned_tiles, self.seconds_per_image,
                                 record.compile_seconds, record.speedup)
        log.info("model actor %s: compile=%s → %s (planned %d tiles x %.3f s; compile ~%.0f s, speed-up %.2fx)",
                 self.module, self.execution.compile, decided, self.execution.planned_tiles,
                 self.seconds_per_image, record.compile_seconds, record.speedup)
        return decided

    def _compile(self) -> None:
        """Compile now, on sample inputs at the chosen batch, so no image waits for it; record how long
        it took and the speed-up for later `auto` decisions."""
        from ugpnet.compiled import CompileRecord, CompileRecords, compile_model

        eager_s = self._time_call(self.batch_size, warm=True)
        self.target = compile_model(self.target)  # in place; the cache was set up above
        first_s = self._time_call(self.batch_size, warm=False)
        compiled_s = self._time_call(self.batch_size, warm=False)
        record = CompileRecord(compile_seconds=max(0.0, first_s - compiled_s), speedup=eager_s / max(compiled_s, 1e-9))
        CompileRecords(self.cache_dir).put(self.record_key, record)
        log.info("model actor %s: compiled in %.1f s, %.2fx eager (cache %s, pid %d)", self.module,
                 record.compile_seconds, record.speedup, self.cache_dir, os.getpid())

    def _time_call(self, size: int, warm: bool) -> float:
        import torch

        samples = self._samples(size)
        with torch.inference_mode():
            if warm:
                self._forward(*samples)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            started = time.perf_counter()
            self._forward(*samples)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return time.perf_counter() - started
