"""Training data on Ray Data: clean images → (decode, random crop, flip, degrade) on CPU workers.

The catalogue pass decodes every image once on the cluster and returns only small metadata, so a
folder with corrupt files trains on the rest and reports how many were skipped. The validation
split is fixed by a hash of each image's path (stable as the folder grows); validation pairs are
centre crops degraded with per-image seeds, so every evaluation sees the same inputs.
"""

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.common import storage
from pipelines.train.config import IMAGE_EXTENSIONS
from ugpnet.degradations import Degradation, degrade, sample_seed
from ugpnet.images import ImageDecodeError, decode_image

VALIDATION_SEED = 12345  # fixed: validation inputs never change between runs


@dataclass(frozen=True)
class Catalogue:
    train: list[str]
    validation: list[str]
    skipped: list[tuple[str, str]]  # (uri, reason)


def list_image_uris(data_uri: str) -> list[str]:
    root = storage.resolve(data_uri)
    infos = storage.list_files(root)
    uris = sorted(storage.Location(root.spec, info.path).uri for info in infos
                  if info.path.lower().endswith(IMAGE_EXTENSIONS))
    return uris


def is_validation(uri: str, fraction: float) -> bool:
    digest = hashlib.sha1(uri.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def check_image(row: dict) -> dict:
    """Ray Data map: decode once; keep only whether it worked (and why not)."""
    try:
        decoded = decode_image(storage.read_bytes(storage.resolve(row["uri"])))
        return {"uri": row["uri"], "error": "", "width": decoded.width, "height": decoded.height}
    except (ImageDecodeError, OSError) as exc:
        return {"uri": row["uri"], "error": f"{type(exc).__name__}: {exc}", "width": 0, "height": 0}


def build_catalogue(data_uri: str, val_fraction: float) -> Catalogue:
    import ray

    uris = list_image_uris(data_uri)
    if not uris:
        raise ValueError(f"data: no images ({', '.join(IMAGE_EXTENSIONS)}) under {data_uri}")
    checked = ray.data.from_items([{"uri": u} for u in uris]).map(check_image).take_all()
    ok = sorted(r["uri"] for r in checked if not r["error"])
    skipped = sorted((r["uri"], r["error"]) for r in checked if r["error"])
    if not ok:
        raise ValueError(f"data: none of the {len(uris)} files under {data_uri} could be decoded")
    validation = [u for u in ok if is_validation(u, val_fraction)]
    train = [u for u in ok if not is_validation(u, val_fraction)]
    if not validation:  # tiny folders: hold out one image so validation exists
        validation, train = train[-1:], train[:-1] or train
    return Catalogue(train=train, validation=validation, skipped=skipped)


def load_rgb(uri: str) -> torch.Tensor:
    """(3,H,W) float32 in [0,1]; alpha is dropped for training."""
    decoded = decode_image(storage.read_bytes(storage.resolve(uri)))
    return torch.from_numpy(np.ascontiguousarray(decoded.rgb.transpose(2, 0, 1)))


def ensure_min_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Upscale (bicubic) images whose shorter side is below the crop size."""
    h, w = image.shape[-2:]
    if min(h, w) >= size:
        return image
    factor = size / min(h, w)
    new = (max(size, round(h * factor)), max(size, round(w * factor)))
    resized = torch.nn.functional.interpolate(image[None], size=new, mode="bicubic", align_corners=False)
    return resized[0].clamp(0, 1)


def make_train_sample(row: dict, size: int, degradation: Degradation) -> dict:
    """Ray Data map: a random crop of side `size`, random flips, then the degradation."""
    rng = np.random.default_rng()  # fresh entropy: training crops need no reproducibility
    image = ensure_min_side(load_rgb(row["uri"]), size)
    h, w = image.shape[-2:]
    top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    gt = image[:, top:top + size, left:left + size]
    if rng.random() < 0.5:
        gt = gt.flip(-1)
    if rng.random() < 0.5:
        gt = gt.flip(-2)
    lq = degrade(gt.contiguous(), degradation, rng)
    return {"lq": lq.numpy().astype(np.float32), "gt": gt.numpy().astype(np.float32)}


def validation_crops(h: int, w: int, size: int, count: int) -> list[tuple[int, int]]:
    """Top-left corners of `count` (1–5) crops: the centre, then the centres of the four quadrants."""
    centres = [(h / 2, w / 2), (h / 4, w / 4), (h / 4, 3 * w / 4), (3 * h / 4, w / 4), (3 * h / 4, 3 * w / 4)]
    return [(min(max(round(y - size / 2), 0), h - size), min(max(round(x - size / 2), 0), w - size))
            for y, x in centres[:count]]


def validation_pairs(uris: list[str], size: int, degradation: Degradation, limit: int):
    """Fixed (lq, gt) tensors: up to `limit` crops, degraded with per-crop seeds. Few held-out images
    give several crops each (up to five), so one crop's content does not decide the validation score."""
    lqs, gts = [], []
    uris = uris[:limit]
    per_image = max(1, min(5, limit // max(len(uris), 1)))
    for uri in uris:
        image = ensure_min_side(load_rgb(uri), size)
        for top, left in validation_crops(*image.shape[-2:], size, per_image):
            gt = image[:, top:top + size, left:left + size].contiguous()
            lqs.append(degrade(gt, degradation, sample_seed(VALIDATION_SEED, len(gts))))
            gts.append(gt)
    return torch.stack(lqs), torch.stack(gts)


# Rows per Ray Data block (one map task each). from_items alone cuts an epoch into up to 200 blocks
# of a few rows, and the row-level random_shuffle that followed ran an all-to-all over them every
# pass (256 rows came out as 146 blocks): hundreds of tiny tasks per epoch for the streaming executor
# to schedule on the node the train worker shares. 16 rows are 4 batches of the small presets' 4,
# so one task fills the worker's prefetch. (Its effect on step time was not measurable on the loaded
# machine it was written on; the task count per epoch is what it changes.)
ROWS_PER_BLOCK = 16


def train_dataset(uris: list[str], size: int, degradation: Degradation, samples_per_epoch: int,
                  max_tasks: int | None = None):
    """An epoch of `samples_per_epoch` random crops, cycling through the images (a small folder
    still gives every worker full batches; each pass draws new crops and degradations). The rows
    are shuffled once here and the blocks again on every pass (randomize_block_order): the rows are
    only image URIs, so a row-level all-to-all shuffle each pass buys little and costs many tasks.
    `max_tasks`: at most that many data tasks at once (see data_task_limit)."""
    import ray

    items = [{"uri": uris[i % len(uris)]} for i in range(max(samples_per_epoch, len(uris)))]
    np.random.default_rng().shuffle(items)
    blocks = max(1, -(-len(items) // ROWS_PER_BLOCK))
    # Fractional CPUs (Ray Data gives its tasks 1 CPU by default): on a small node whole-CPU data
    # tasks starve beside the train workers (2 workers × 0.75 CPU on a 2-CPU node left 0.5 CPU).
    compute = ray.data.TaskPoolStrategy(size=max_tasks) if max_tasks else None
    return ray.data.from_items(items, override_num_blocks=blocks).randomize_block_order().map(
        make_train_sample, fn_kwargs={"size": size, "degradation": degradation}, num_cpus=0.25, compute=compute)


def data_task_limit(cluster_cpus: float, training_cpus: float) -> int:
    """Data tasks to run at once: one per whole CPU the train workers leave free, at least one. A task
    is one single-threaded process whatever CPU share it reserves, so four 0.25-CPU tasks on the one
    CPU a 2-core node has left ran four processes beside the train worker, and took its core too: its
    thread waited for a CPU 11-12 % of the time in the short-step stages (bench/train_throughput.py).
    One task of 16 rows fills a worker's prefetch ahead of steps that take far longer than the task."""
    return max(1, int(cluster_cpus - training_cpus))
