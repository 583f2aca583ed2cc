"""The switch between the fast inference path (the default) and the reference path (issue 11).

The reference path is the official computation, op for op. The fast path computes the same
function with in-place activations, channels_last activations where they are faster, and the
modulated convolution laid out as plain convolutions. It runs only without autograd
(`torch.inference_mode()` / `torch.no_grad()`): in-place activations would break backward, and
training keeps the reference path so its gradients stay exactly the official ones.

    from ugpnet.fastpath import set_fast
    set_fast(model, False)   # the reference path, e.g. to compare against the official code
"""

import torch
from torch import nn

CHANNELS_LAST = torch.channels_last


def runs_fast(module: nn.Module) -> bool:
    """True when `module` should take its fast path now: enabled (the default) and no autograd."""
    return getattr(module, "fast", True) and not torch.is_grad_enabled()


def set_fast(model: nn.Module, enabled: bool) -> nn.Module:
    """Enable or disable the fast path for `model` and all its submodules; returns `model`."""
    for module in model.modules():
        module.fast = enabled
    return model


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """4-D activations in channels_last (a no-op when they already are)."""
    return x.contiguous(memory_format=CHANNELS_LAST)


def in_fast_layout(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` in the memory format `module` runs fastest in on the fast path.

    A module's `fast_channels_last` (class attribute, default True) records what
    bench/model_forward.py measured for it; setting it on an instance overrides it.
    """
    if getattr(module, "fast_channels_last", True):
        return to_channels_last(x)
    return x.contiguous()
