"""The Ray Data stages of `ugpnet evaluate`: read → decode → crop → degrade at each strength (CPU
tasks) → model + metrics + grid strips (actor pool). They live in the package because Ray workers
must be able to import them.

A row entering the CPU stage is one clean image; it leaves as one row per degradation strength,
carrying the ground truth `gt` (3,H,W) and the degraded input `lq` (3,H/s,W/s), float32 in [0,1].
When classical baselines are on, the CPU task also runs them on that very `lq` (with the truth the
degradation drew, for the non-blind ones) and carries their outputs as 8-bit levels: they run where
the degraded input is, on any node, and only the actor measures them.
The actor turns each of those into one metric row per output (input, restored, synthesized, fused,
then each baseline), so the result always holds images × strengths × outputs rows; a failure in any
stage makes that image's rows `error` rows with the stage and the reason (a failed baseline only its
own rows), and the run goes on.
"""

import hashlib
import io
import json
import math
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipelines.common import storage
from pipelines.common.error_kinds import error_text
from pipelines.restore.stages import ERROR, OK, PENDING
from ugpnet.images import quantize_levels, quantize_to_uint8
from ugpnet.tasks import evaluation_degradation

OUTPUTS = ("input", "restored", "synthesized", "fused")
BASE_METRICS = ("psnr", "ssim", "hf_ratio", "hf_distance", "gmsd")
MIN_SIDE = 16         # pixels: SSIM's 11×11 window and GMSD's 2× pool + 3×3 gradients need room
GRID_DIR = "grids"

METRIC_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("image", pa.string()),            # the input's relative key (folder/prefix/manifest listing)
    ("input_uri", pa.string()),
    ("task", pa.string()),
    ("strength", pa.float64()),        # denoise: noise σ (0–255); deblur: blur σ (px); sr: scale factor
    ("seed_index", pa.int64()),        # degrade(gt, ..., sample_seed(seed, seed_index)) reproduces the input
    ("output", pa.string()),           # input | restored | synthesized | fused | a baseline's name
    ("status", pa.string()),           # ok | error
    ("error", pa.string()),            # "<stage>: <reason>" for errors, else null
    ("width", pa.int32()),             # ground truth as evaluated (after cropping)
    ("height", pa.int32()),
    ("psnr", pa.float64()),            # dB on 8-bit levels; inf for identical images
    ("ssim", pa.float64()),
    ("hf_ratio", pa.float64()),        # Laplacian energy ÷ GT's: 1 ideal, < 1 smoother, > 1 noisier
    ("hf_distance", pa.float64()),     # |log2 hf_ratio|: 0 ideal, symmetric in "too smooth" and "too noisy"
    ("gmsd", pa.float64()),            # 0 ideal
    ("lpips", pa.float64()),           # null unless LPIPS weights were given
    ("model_ref", pa.string()),
    ("model_version", pa.string()),
    ("model_ms", pa.float64()),        # model time of this image at this strength (same on the model's rows);
                                       # a baseline's row: that baseline's time
    ("grid_uri", pa.string()),         # LQ | restored | synthesized | fused | baselines | GT strip, for a few images
])


def seed_index(key: str) -> int:
    """A per-image index for `sample_seed` from the image's key, not its position in the listing,
    so an image gets the same degraded input whatever else is in the test set."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:6], "big")


@dataclass(frozen=True)
class EvalSettings:
    """Everything the stages need; picklable and free of secrets."""

    run_id: str
    task: str
    strengths: tuple[float, ...]
    seed: int
    crop: int                 # pixels: centre crop of the clean image to at most crop×crop (0: whole image)
    scale: int
    fit: str
    batch_size: int
    max_pixels: int
    with_lpips: bool
    vgg16: str | None
    lpips_heads: str | None
    grid_crop: int            # pixels of the ground truth shown per grid panel (centre square)
    report_root: storage.Location
    s3: storage.StorageSpec
    model_ref: str
    model_version: str
    precision: str = "fp32"   # the forward pass's autocast (ugpnet.inference); outputs stay float32
    baselines: tuple[str, ...] = ()  # names of the classical baselines to run (ugpnet.baselines); () = none

    @property
    def outputs(self) -> tuple[str, ...]:
        return output_names(self.baselines)


def output_names(baselines: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every output measured, in report order: the input, the model's three, then the baselines."""
    return OUTPUTS + tuple(baselines)


# ---------------------------------------------------------------- read, decode, degrade (CPU task)

def read_decode_degrade(batch: dict, settings: EvalSettings) -> dict:
    """One row per clean image in → one row per (image, strength) out."""
    import torch

    from ugpnet.degradations import degrade_recorded, sample_seed
    from ugpnet.images import decode_image

    columns = ("image", "input_uri", "strength", "seed_index", "status", "error", "grid", "gt", "lq")
    out = {key: [] for key in columns + (BASELINE_COLUMNS if settings.baselines else ())}
    empty = np.zeros((3, 0, 0), np.float32)  # same ndim as real images: Ray needs one tensor rank per column
    for i in range(len(batch["image"])):
        key, uri, index = str(batch["image"][i]), str(batch["input_uri"][i]), seed_index(str(batch["image"][i]))
        gt, error = None, str(batch["error"][i]) if batch["status"][i] != PENDING else ""
        if not error:
            try:
                data = storage.read_bytes(storage.resolve(uri, settings.s3))
            except Exception as err:  # every failure becomes this image's error, never the job's
                error = f"read: {error_text(err)}"
        if not error:
            try:
                gt = crop_ground_truth(decode_image(data, max_pixels=settings.max_pixels).rgb, settings)
            except Exception as err:
                error = f"{getattr(err, 'stage', 'decode')}: {error_text(err)}"
        for strength in settings.strengths:
            lq, record, row_error = empty, None, error
            if not row_error:
                try:
                    lq, record = degrade_recorded(torch.from_numpy(gt), evaluation_degradation(settings.task, strength),
                                                  sample_seed(settings.seed, index))
                    lq = lq.numpy()
                except Exception as err:
                    row_error = f"degrade: {error_text(err)}"
            if settings.baselines:
                for name, value in run_baselines(settings.baselines, settings.task, lq, record, row_error).items():
                    out[name].append(value)
            for name, value in (("image", key), ("input_uri", uri), ("strength", float(strength)),
                                ("seed_index", index), ("status", ERROR if row_error else PENDING),
                                ("error", row_error), ("grid", bool(batch["grid"][i])),
                                ("gt", gt if gt is not None and not row_error else empty), ("lq", lq)):
                out[name].append(value)
    return out


BASELINE_COLUMNS = ("baseline_images", "baseline_errors", "baseline_ms")


def run_baselines(names: tuple[str, ...], task: str, lq: np.ndarray, record, error: str) -> dict:
    """The named baselines on one degraded input lq (3,h,w): their outputs (n,3,H,W) as uint8 levels
    (zeros where one failed), each one's error ("" when it ran) and milliseconds (nan when it failed)."""
    from ugpnet.baselines import baselines_for, run_baseline

    known = {b.name: b for b in baselines_for(task)}
    chosen = [known[name] for name in names]  # in the order of `names`: the actor reads them by position
    images = np.zeros((len(chosen), 3, 0, 0), np.uint8)
    errors, times = [error or ""] * len(chosen), [math.nan] * len(chosen)
    if not error:
        outputs = []
        for i, baseline in enumerate(chosen):
            started = time.perf_counter()
            try:
                outputs.append(run_baseline(baseline, lq.transpose(1, 2, 0), record))
                times[i] = (time.perf_counter() - started) * 1000
            except Exception as err:  # one baseline failing costs only its own rows
                errors[i] = f"baseline: {error_text(err)}"
                outputs.append(None)
        shape = next((o.shape for o in outputs if o is not None), None)
        if shape is not None:
            # Rounded as the model's outputs are (quantize_levels, in EvaluateModel): all measured alike.
            images = np.stack([quantize_to_uint8(o).transpose(2, 0, 1) if o is not None
                               else np.zeros((3, *shape[:2]), np.uint8) for o in outputs])
    return {"baseline_images": images, "baseline_errors": json.dumps(errors),
            "baseline_ms": np.asarray(times, np.float64)}


class _CropError(ValueError):
    stage = "crop"


def crop_ground_truth(rgb: np.ndarray, settings: EvalSettings) -> np.ndarray:
    """(H,W,3) decoded pixels → (3,h,w) ground truth: centre crop to `crop`, then trimmed (bottom,
    right) so that the sides divide by the SR scale."""
    height, width = rgb.shape[:2]
    h = min(height, settings.crop) if settings.crop else height
    w = min(width, settings.crop) if settings.crop else width
    top, left = (height - h) // 2, (width - w) // 2
    h, w = h - h % settings.scale, w - w % settings.scale
    if min(h, w) < MIN_SIDE:
        raise _CropError(f"image {width}x{height} is too small: the metrics need at least {MIN_SIDE}x{MIN_SIDE} "
                         f"pixels (after cropping to multiples of {settings.scale})")
    return np.ascontiguousarray(rgb[top:top + h, left:left + w].transpose(2, 0, 1), dtype=np.float32)


# ---------------------------------------------------------------- model + metrics (actor pool)

class EvaluateModel:
    """One actor: runs the model on each degraded image (any size, through the fit policy) and
    measures the input and the three outputs against the ground truth."""

    def __init__(self, payload_ref, settings: EvalSettings, use_gpu: bool, threads: int):
        import ray
        import torch

        from pipelines.common.models import payload_model

        payload = ray.get(payload_ref) if isinstance(payload_ref, ray.ObjectRef) else payload_ref
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, threads))
        self.settings = settings
        self.model = payload_model(payload, self.device)
        self.lpips = None
        if settings.with_lpips:
            from ugpnet.vgg import LPIPS, PerceptualWeights

            self.lpips = LPIPS(PerceptualWeights(vgg16=settings.vgg16, lpips_heads=settings.lpips_heads)).to(
                self.device)

    def __call__(self, batch: dict) -> pa.Table:
        columns = {field.name: [] for field in METRIC_SCHEMA}
        for i in range(len(batch["image"])):
            row = {name: batch[name][i] for name in ("image", "input_uri", "strength", "seed_index", "status",
                                                     "error", "grid")}
            gt, lq = np.asarray(batch["gt"][i]), np.asarray(batch["lq"][i])
            metrics, model_ms, grid_uri, error = {}, None, None, str(row["error"] or "")
            baseline_errors, baseline_ms = self._baseline_results(batch, i)
            if row["status"] == PENDING:
                stage = "model"
                try:
                    images, model_ms = self._restore(gt, lq)
                    images.update(self._baseline_images(batch, i, baseline_errors))
                    stage = "metrics"
                    metrics = self._measure(images)
                    stage = "grid"
                    grid_uri = self._write_grid(images, row) if bool(row["grid"]) else None
                except Exception as err:  # one image the model or a metric cannot handle: its rows fail
                    metrics, error = {}, f"{stage}: {error_text(err)}"
            height, width = gt.shape[-2:]
            for output in self.settings.outputs:
                values = metrics.get(output, {})
                failure = (error or baseline_errors.get(output)) or "no result"
                record = {"run_id": self.settings.run_id, "image": str(row["image"]),
                          "input_uri": str(row["input_uri"]), "task": self.settings.task,
                          "strength": float(row["strength"]), "seed_index": int(row["seed_index"]), "output": output,
                          "status": OK if values else ERROR, "error": None if values else failure,
                          "width": int(width) or None, "height": int(height) or None,
                          "model_ref": self.settings.model_ref, "model_version": self.settings.model_version,
                          "model_ms": baseline_ms.get(output, model_ms), "grid_uri": grid_uri, **values}
                for name in columns:
                    columns[name].append(record.get(name))
        return pa.Table.from_pydict(columns, schema=METRIC_SCHEMA)

    def _restore(self, gt_array: np.ndarray, lq_array: np.ndarray):
        """The ground truth, the degraded input and the three outputs, (1,3,H,W) each, as 8-bit levels
        in [0,1]: every image is measured as the file a user would get, so all metrics agree."""
        import torch
        from torch.nn import functional as F

        from ugpnet.inference import autocast

        # Copies: Ray hands read-only views of its object store, which torch must not write through.
        gt = torch.tensor(gt_array, device=self.device)[None]
        lq = torch.tensor(lq_array, device=self.device)[None]
        started = time.perf_counter()
        with torch.inference_mode(), autocast(self.settings.precision, self.device):
            result = self.model.restore(lq[0], fit=self.settings.fit, batch_size=self.settings.batch_size,
                                        return_all=True)
        model_ms = (time.perf_counter() - started) * 1000
        # The input as a viewer compares it with GT: the same size (bicubic enlargement for SR).
        shown_input = lq if lq.shape == gt.shape else F.interpolate(lq, size=gt.shape[-2:], mode="bicubic",
                                                                     align_corners=False)
        images = {"lq": lq, "gt": gt, "input": shown_input, "restored": result.restored[None],
                  "synthesized": result.synthesized[None], "fused": result.fused[None]}
        return {name: quantize_levels(image.float()) / 255 for name, image in images.items()}, model_ms

    def _baseline_results(self, batch: dict, i: int) -> tuple[dict[str, str], dict[str, float]]:
        """Each baseline's error (only those that failed) and milliseconds (only those that ran)."""
        if not self.settings.baselines:
            return {}, {}
        errors = json.loads(str(batch["baseline_errors"][i]))
        times = np.asarray(batch["baseline_ms"][i], np.float64)
        names = self.settings.baselines
        return ({n: e for n, e in zip(names, errors, strict=True) if e},
                {n: float(t) for n, t in zip(names, times, strict=True) if math.isfinite(t)})

    def _baseline_images(self, batch: dict, i: int, errors: dict[str, str]) -> dict:
        """The baselines' outputs that ran, (1,3,H,W) levels in [0,1] like the model's outputs."""
        import torch

        if not self.settings.baselines:
            return {}
        stack = np.asarray(batch["baseline_images"][i])
        return {name: torch.tensor(stack[j], device=self.device)[None].float() / 255
                for j, name in enumerate(self.settings.baselines) if name not in errors}

    def _measure(self, images: dict) -> dict[str, dict[str, float]]:
        import torch

        with torch.inference_mode():
            return {output: image_metrics(images[output], images["gt"], self.lpips)
                    for output in self.settings.outputs if output in images}

    def _write_grid(self, images: dict, row: dict) -> str:
        """A centre square of `grid_crop` GT pixels: LQ (enlarged, nearest) | restored | synthesized |
        fused | each baseline (grey where one failed) | GT, at 1:1 so that texture stays visible."""
        import torch

        from pipelines.common.sample_grid import sample_grid

        gt, scale = images["gt"], self.settings.scale
        side = min(self.settings.grid_crop, gt.shape[-2], gt.shape[-1])
        side -= side % scale
        top = (gt.shape[-2] - side) // 2 // scale * scale
        left = (gt.shape[-1] - side) // 2 // scale * scale

        def crop(image, factor=1):
            return image[..., top // factor:(top + side) // factor, left // factor:(left + side) // factor].cpu()

        panels = [crop(images[name]) if name in images else torch.full_like(crop(gt), 0.5)
                  for name in self.settings.outputs[1:]]
        strip = sample_grid(crop(images["lq"], scale), panels, crop(gt))
        buffer = io.BytesIO()
        strip.save(buffer, format="PNG")
        location = self.settings.report_root.child(grid_key(str(row["image"]), float(row["strength"])))
        storage.write_bytes(location, buffer.getvalue())
        return location.uri


def grid_key(image: str, strength: float) -> str:
    return storage.safe_relative_key(f"{GRID_DIR}/{image}@{strength:g}.png")


def image_metrics(image, gt, lpips=None) -> dict[str, float]:
    """Every metric of one image (1,3,H,W) against GT, both in [0,1]."""
    from ugpnet import metrics

    values = {"psnr": float(metrics.psnr(image, gt)[0]), "ssim": float(metrics.ssim(image, gt)[0]),
              "hf_ratio": float(metrics.high_frequency_energy_ratio(image, gt)[0]),
              "gmsd": float(metrics.gmsd(image, gt)[0])}
    values["hf_distance"] = abs(math.log2(max(values["hf_ratio"], 1e-12)))
    if lpips is not None:
        values["lpips"] = float(lpips(image * 2 - 1, gt * 2 - 1)[0])  # LPIPS takes [-1,1]
    return values


def describe_degradation(task: str, strength: float) -> str:
    """The degradation as JSON, for the summary and the report."""
    return json.dumps(evaluation_degradation(task, strength).to_dict())
