"""Inputs and independent measurements shared by the evaluate tests: the three real sample photos,
their centre crops as 8-bit arrays, and PSNR computed in numpy (not by the code under test)."""

import math
from pathlib import Path

import numpy as np
from PIL import Image

CROP = 64  # the tiny presets' native size: one tile per image keeps the model stage quick


def write_photos(folder: Path) -> Path:
    """scikit-learn's two photos and matplotlib's Grace Hopper into `folder`, without the sources file
    (evaluate would take it for an input)."""
    from pipelines.data.samples import write_sample_photos

    write_sample_photos(folder, with_skimage=False)
    (folder / "SOURCES.json").unlink()
    return folder


def centre_crop_u8(path, side=CROP) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    top, left = (rgb.shape[0] - side) // 2, (rgb.shape[1] - side) // 2
    return rgb[top:top + side, left:left + side]


def numpy_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
