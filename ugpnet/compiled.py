"""torch.compile (inductor) for inference, with a persistent cache and the rule for when it pays.

`compile_model` is the one way to compile (bench and actors); `should_compile` decides `auto` from
the records of measured compile times kept beside the cache (`CompileRecords`).

Measured on this project's CPU machines (2 threads, official 512² presets, docs/execution.md): the
first compiled call takes 39-121 s; later calls run 0.85x (nafnet_denoise) to 1.21x (hinet_deblur)
the speed of the fast eager path. With a warm cache (same model shapes, same torch) a later process
compiles in a fraction of that. So compile when the planned work saves more than the
compile costs: images x seconds per image x (1 - 1/speedup) > compile seconds.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

COMPILE_MODES = ("off", "on", "auto")
RECORDS_FILE = "ugpnet-compile-records.json"
# Used until this cache holds a measurement for the same key (see CompileRecords).
DEFAULT_COMPILE_SECONDS = {"cpu": 90.0, "cuda": 60.0}
DEFAULT_SPEEDUP = 2.0


def use_cache_dir(cache_dir: str | os.PathLike) -> Path:
    """Point inductor's on-disk caches (FX graphs, kernels) at `cache_dir`, so later actors and runs
    on this machine reuse them. Must run before the first compile of the process."""
    path = Path(cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    return path


COMPILED_MODULES = ("resmodule", "synmodule", "fusmodule")


def compile_model(module: torch.nn.Module, cache_dir: str | os.PathLike | None = None, *,
                  dynamic: bool = False, mode: str | None = None, options: dict | None = None) -> torch.nn.Module:
    """Compile `module` in place with inductor and return it: the one entry point, used by the bench
    and by the model actors (pipelines/restore/model_runtime.py). Compilation happens on the first call.

    A whole UGPNet compiles its three modules one by one, so the split pipeline mode (which calls
    them separately) runs compiled too; any other module (an actor's `resmodule`, ...) compiles as
    it is. Each part's bound `forward` is replaced by its compiled version: the state-dict keys stay
    the official ones (no `_orig_mod.`), and unlike `nn.Module.compile` (which, measured on torch
    2.13, left a module called directly uncompiled: eager speed, no kernels in the cache) it compiles
    however the module is called. Tracing follows
    the active path: under `torch.inference_mode()` the fast path (ugpnet.fastpath), channels_last
    inside. `cache_dir`: persistent compile cache (see use_cache_dir; None keeps the current one).
    `dynamic=False`: one graph per input shape (an actor runs a few fixed batch shapes). `mode` and
    `options` (inductor config, e.g. {"freezing": True}) go to torch.compile.
    """
    if cache_dir is not None:
        use_cache_dir(cache_dir)
    is_ugpnet = all(isinstance(getattr(module, name, None), torch.nn.Module) for name in COMPILED_MODULES)
    for part in [getattr(module, name) for name in COMPILED_MODULES] if is_ugpnet else [module]:
        part.forward = torch.compile(part.forward, backend="inductor", dynamic=dynamic, mode=mode, options=options)
    return module


def should_compile(mode: str, planned_images: int, seconds_per_image: float, compile_seconds: float,
                   speedup: float) -> bool:
    """off / on as asked; auto: only when the planned work saves more time than compiling costs."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    if speedup <= 1.0:
        return False
    saved = planned_images * seconds_per_image * (1.0 - 1.0 / speedup)
    return saved > compile_seconds


@dataclass
class CompileRecord:
    compile_seconds: float
    speedup: float


class CompileRecords:
    """Measured compile times and speed-ups, kept beside the compile cache (keyed by what changes
    them: model, device, precision, batch), so `auto` decides from measurements once there are some."""

    def __init__(self, cache_dir: str | os.PathLike):
        self.path = Path(cache_dir) / RECORDS_FILE

    def get(self, key: str, device_type: str) -> CompileRecord:
        record = self._read().get(key)
        if record is None:
            return CompileRecord(DEFAULT_COMPILE_SECONDS.get(device_type, 90.0), DEFAULT_SPEEDUP)
        return CompileRecord(float(record["compile_seconds"]), float(record["speedup"]))

    def put(self, key: str, record: CompileRecord) -> None:
        records = self._read()
        records[key] = {"compile_seconds": record.compile_seconds, "speedup": record.speedup}
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(records, indent=2, sort_keys=True))
        temporary.replace(self.path)  # atomic: concurrent actors never read half a file

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
