"""Classical restoration methods a model is compared with (`ugpnet evaluate --baselines`).

Each baseline takes the very degraded image the model gets, lq (h,w,3) float in [0,1], and what the
degradation drew (`ugpnet.degradations.DegradationRecord`); it returns (H,W,3) float in [0,1].
Blind baselines use only lq (their parameters are fixed or estimated from lq); non-blind ones are
given the degradation's true parameter and say so in their name ("true σ", "true kernel").

Their optional packages are imported inside the functions: `pip install 'ugpnet[baselines]'`
(opencv-python-headless, PyWavelets, bm3d; scikit-image and SciPy come with the pipelines extra).
Fixed parameters were chosen once on three scikit-image photos (256² crops) at the evaluation's
default strengths, never per image or per strength.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ugpnet.degradations import DegradationRecord
from ugpnet.images import quantize_to_uint8

INSTALL_HINT = "pip install 'ugpnet[baselines]'"
NLM_H_PER_SIGMA = 0.8       # OpenCV's h (and hColor) ÷ the estimated noise σ (0–255): best of 0.6–1.2 at σ 15–50
UNSHARP_RADIUS = 2.0        # px, Gaussian σ of the blurred copy subtracted
UNSHARP_AMOUNT = 1.0        # improves on the input at blur σ 1, 2 and 3 alike (amount 2 loses at σ 1)
WIENER_BALANCE = 1e-3       # the deblur inputs carry only 8-bit rounding noise: little regularisation is best


@dataclass(frozen=True)
class Baseline:
    name: str                   # its output's name in the table, plots, grids and per_image.parquet
    blind: bool                 # False: given the degradation's true parameter
    how: str                    # how its parameters are chosen (shown in the report)
    modules: tuple[str, ...]    # optional imports it needs
    method: Callable[[np.ndarray, DegradationRecord], np.ndarray]


class MissingBaselineDependency(ImportError):
    pass


# ---------------------------------------------------------------- denoise

def nlm(lq: np.ndarray, record: DegradationRecord) -> np.ndarray:
    import cv2
    from skimage.restoration import estimate_sigma

    sigma = float(estimate_sigma(lq, channel_axis=-1, average_sigmas=True)) * 255
    h = max(NLM_H_PER_SIGMA * sigma, 1e-3)
    bgr = np.ascontiguousarray(quantize_to_uint8(lq)[..., ::-1])  # OpenCV's colour conversion expects BGR
    return cv2.fastNlMeansDenoisingColored(bgr, None, h, h, 7, 21)[..., ::-1] / 255.0


def wavelet(lq: np.ndarray, record: DegradationRecord) -> np.ndarray:
    from skimage.restoration import denoise_wavelet

    return denoise_wavelet(lq.astype(np.float64), method="BayesShrink", mode="soft", rescale_sigma=True,
                           channel_axis=-1)


def bm3d_true_sigma(lq: np.ndarray, record: DegradationRecord) -> np.ndarray:
    import bm3d

    if record.noise_sigma <= 0:  # nothing was added: BM3D given σ 0 has nothing to remove
        return lq
    return bm3d.bm3d_rgb(lq.astype(np.float64), sigma_psd=record.noise_sigma / 255)


# ---------------------------------------------------------------- deblur

def unsharp_mask(lq: np.ndarray, record: DegradationRecord) -> np.ndarray:
    from scipy import ndimage

    image = lq.astype(np.float64)
    blurred = ndimage.gaussian_filter(image, (UNSHARP_RADIUS, UNSHARP_RADIUS, 0), mode="reflect")
    return image + UNSHARP_AMOUNT * (image - blurred)


def wiener_true_kernel(lq: np.ndarray, record: DegradationRecord) -> np.ndarray:
    from skimage.restoration import wiener

    if record.kernel is None:  # no blur was applied
        return lq
    kernel = np.asarray(record.kernel, np.float64)
    # Wiener works in the Fourier domain (the image wraps round); the degradation reflected at the
    # borders, so a reflected margin of two kernel widths keeps the wrap-around out of the crop.
    pad = 2 * kernel.shape[0]
    padded = np.pad(lq.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    channels = [wiener(padded[..., c], kernel, WIENER_BALANCE, clip=False) for c in range(3)]
    return np.stack(channels, -1)[pad:-pad, pad:-pad]


# ---------------------------------------------------------------- super-resolution

def _pil_resize(lq: np.ndarray, record: DegradationRecord, resample: str) -> np.ndarray:
    from PIL import Image

    h, w = lq.shape[:2]
    size = (w * record.downscale, h * record.downscale)
    return np.asarray(Image.fromarray(quantize_to_uint8(lq)).resize(size, getattr(Image.Resampling, resample))) / 255.0


def bicubic(lq: np.ndarray, record: DegradationRecord) -> np.ndarray:
    return _pil_resize(lq, record, "BICUBIC")


def lanczos(lq: np.ndarray, record: DegradationRecord) -> np.ndarray:
    return _pil_resize(lq, record, "LANCZOS")


BASELINES: dict[str, tuple[Baseline, ...]] = {
    "denoise": (
        Baseline("opencv nlm", True, f"OpenCV fastNlMeansDenoisingColored, h = hColor = {NLM_H_PER_SIGMA:g} × the "
                 "noise σ estimated from the input (skimage estimate_sigma), 7×7 patches, 21×21 search",
                 ("cv2", "skimage"), nlm),
        Baseline("wavelet BayesShrink", True, "scikit-image denoise_wavelet, BayesShrink soft thresholds from the "
                 "input's estimated σ (rescale_sigma)", ("pywt", "skimage"), wavelet),
        Baseline("bm3d (true σ)", False, "bm3d.bm3d_rgb given the true noise σ of the degradation",
                 ("bm3d",), bm3d_true_sigma),
    ),
    "deblur": (
        Baseline("unsharp mask", True, f"input + {UNSHARP_AMOUNT:g} × (input − Gaussian blur σ {UNSHARP_RADIUS:g} px)"
                 ", the same at every strength", ("scipy",), unsharp_mask),
        Baseline("wiener (true kernel)", False, f"scikit-image wiener per channel given the true blur kernel, "
                 f"balance {WIENER_BALANCE:g}, reflected borders", ("skimage",), wiener_true_kernel),
    ),
    "sr": (
        Baseline("bicubic (PIL)", True, "Pillow bicubic enlargement of the input", (), bicubic),
        Baseline("lanczos (PIL)", True, "Pillow Lanczos enlargement of the input", (), lanczos),
    ),
}


def baselines_for(task: str) -> tuple[Baseline, ...]:
    return BASELINES.get(task, ())


def missing_modules(task: str) -> list[str]:
    """The optional modules the task's baselines need that do not import here (really imported:
    a broken installation counts as missing)."""
    missing = []
    for module in sorted({m for baseline in baselines_for(task) for m in baseline.modules}):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return missing


def run_baseline(baseline: Baseline, lq: np.ndarray, record: DegradationRecord) -> np.ndarray:
    """lq (h,w,3) float in [0,1] → the baseline's output (H,W,3) float32 in [0,1]."""
    try:
        out = baseline.method(lq, record)
    except ImportError as err:
        raise MissingBaselineDependency(f"{baseline.name} needs {err.name or err}: {INSTALL_HINT}") from err
    expected = (lq.shape[0] * record.downscale, lq.shape[1] * record.downscale, 3)
    if out.shape != expected:
        raise ValueError(f"{baseline.name} returned {out.shape}, expected {expected}")
    return np.clip(out, 0, 1).astype(np.float32)
