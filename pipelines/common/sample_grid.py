"""Image grids for reports and MLflow: one row per sample, LQ | restored | synthesized | fused
[| baselines] | GT."""

import numpy as np
import torch
from PIL import Image

from ugpnet.images import quantize_to_uint8


def sample_grid(lq: torch.Tensor, outputs, gt: torch.Tensor | None = None, gap: int = 2) -> Image.Image:
    """lq (B,3,s,s); outputs: (restored, synthesized, fused, then any baselines), each (B,3,S,S);
    gt (B,3,S,S) or None. Values in [0,1] (clamped when quantised). LQ is enlarged (nearest) so the columns line up."""
    size = outputs[0].shape[-1]
    lq_big = torch.nn.functional.interpolate(lq.float(), size=(size, size), mode="nearest")
    columns = [lq_big, *outputs] + ([gt] if gt is not None else [])
    n_rows, n_cols = lq.shape[0], len(columns)
    canvas = np.full((n_rows * (size + gap) - gap, n_cols * (size + gap) - gap, 3), 255, np.uint8)
    for r in range(n_rows):
        for c, column in enumerate(columns):
            y, x = r * (size + gap), c * (size + gap)
            canvas[y:y + size, x:x + size] = quantize_to_uint8(column[r].detach().cpu().permute(1, 2, 0).numpy())
    return Image.fromarray(canvas)
