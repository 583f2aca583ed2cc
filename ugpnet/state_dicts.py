"""Strict state-dict loading that reports every mismatch at once. Small and free of the model's
modules, so that loaders of other networks (VGG, the official files, training checkpoints) need not
import the bundle code."""

import torch
from torch import nn


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a module; lists every missing, unexpected and misshaped key."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str],
                 misshaped: list[tuple[str, tuple, tuple]]):
        self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped
        lines = [f"checkpoint {source} does not match the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing[:50]))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:50]))
        if misshaped:
            lines.append(f"  misshaped keys ({len(misshaped)}): " + ", ".join(
                f"{k} {tuple(got)} (model expects {tuple(want)})" for k, got, want in misshaped[:50]))
        super().__init__("\n".join(lines))


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                           assign: bool = False) -> None:
    """Strict load that reports all problems in one error instead of stopping at the first.
    `assign`: the module takes `state`'s tensors as its own instead of copying them (one copy of the
    weights fewer; for a freshly loaded state dict nothing else holds)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [(k, tuple(state[k].shape), tuple(expected[k].shape))
                 for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(source, missing, unexpected, misshaped)
    module.load_state_dict(state, strict=True, assign=assign)
