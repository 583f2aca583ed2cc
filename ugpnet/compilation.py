"""Compiling a UGPNet with torch.compile (inductor), with a persistent compile cache (issue 11).

    from ugpnet.compilation import compile_model
    compile_model(model, cache_dir="/var/cache/ugpnet-inductor")  # in place; returns the model
    with torch.inference_mode():
        fused = model(lq)  # the first call per input shape compiles; later ones reuse the kernels

Each top-level module (`resmodule`, `synmodule`, `fusmodule`) is compiled in place with
`nn.Module.compile`, so state-dict keys stay the official ones and the split pipeline mode (which
calls the modules one by one) runs compiled too. Compiling traces whatever path is active: under
`torch.inference_mode()` that is the fast path (ugpnet.fastpath).

Cost (bench/model_forward.py, 2 threads): the first call per (preset, batch size) compiles for about
80 s for an official 512² preset on a quiet machine (more when loaded); with a warm cache directory a
new process compiles the same graph much faster (inductor's FX graph cache). `static` shapes: each
new batch size compiles again, so callers should keep the batch size fixed (pad the last batch).
"""

import os
from pathlib import Path

from torch import nn

COMPILED_MODULES = ("resmodule", "synmodule", "fusmodule")
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_compile_cache(cache_dir: str | Path) -> Path:
    """Point inductor's on-disk caches (FX graph cache, compiled kernels) at `cache_dir`.

    Inductor reads the variable when it first needs its cache, so this must run before the first
    compile in the process; it is process-wide (all compiled models share it).
    """
    path = Path(cache_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(path)
    from torch._inductor import config as inductor_config

    inductor_config.fx_graph_cache = True
    return path


def compile_model(model: nn.Module, cache_dir: str | Path | None = None, *, dynamic: bool = False,
                  mode: str | None = None) -> nn.Module:
    """Compile `model`'s modules in place with inductor and return `model`.

    `cache_dir`: persistent compile cache shared by later processes (None: inductor's default,
    a per-user temp dir). `dynamic=False` compiles one graph per input shape (fastest kernels);
    `mode` is passed to torch.compile (e.g. "max-autotune", which compiles far longer).
    """
    if cache_dir is not None:
        use_compile_cache(cache_dir)
    for name in COMPILED_MODULES:
        getattr(model, name).compile(backend="inductor", dynamic=dynamic, mode=mode)
    return model
