"""`ugpnet restore` throughput and memory on this machine, measured side by side in one run.

1. Throughput: the same model on the same images (native size, so fitting is a no-op) as
   - in-process batched forward: decoded tensors straight into `model(...)` (no I/O, no Ray),
   - the restore pipeline, fused (one actor pool) and split (a pool per module), on a local Ray with
     this machine's CPUs (Ray itself is started before the clock starts). Two rates: the whole run,
     listing to summary, which includes starting worker processes (Python, `import torch`, loading
     the weights: tens of seconds on 2 busy cores), and the streaming rate over the middle 80 % of
     outputs, which is what a long archive run sees.
   Target: pipeline >= 0.7x in-process (small preset, 200 images).
2. Streaming: peak memory (PSS, so shared object-store pages count once) of the whole local Ray
   cluster (driver, GCS, raylet, workers) during a fused run of 200 and of 2,000 images, each on a
   fresh cluster. Target: the 2,000-image peak within +25 % of the 200-image peak.
3. A large photo (--large, 4000x3000 = 12 Mpx by default) in `tile` mode, with the old transport
   (`float32`) and the new (`compact`: uint16 canvas/tiles; fused images as 8-bit levels, split's
   RGB tiles float16): the peak PSS of the whole cluster during a fused run, and the bytes per
   image that cross the stage boundaries (what the object store carries) fused and split, from the
   image's plan (exact: the same formula is held to the real stages' arrays in
   tests/test_restore_memory_units.py). Fused mode streams tiles (the rows carry the canvas and
   the assembled image); beside its bytes the section prints what the per-tile layout of before
   (N tiles in, N tiles out) carried for the same plan. The peak PSS of before was measured by
   running the same fused runs on a checkout from before streaming (recorded in docs/execution.md).

    python bench/restore_throughput.py            # small_denoise x 200, memory tiny_denoise 200 vs 2000
    python bench/restore_throughput.py --quick    # 48 images, memory 100 vs 1000: a smoke run
    python bench/restore_throughput.py --large-only --large 4000x3000   # section 3 alone
"""

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ugpnet
from pipelines.restore import RestoreConfig, run
from ugpnet.images import decode_image


def make_images(directory: Path, count: int, size: int) -> None:
    """Smooth colour ramps plus noise: decodes and encodes like a photo, costs nothing to make."""
    directory.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size]
    for index in range(count):
        rng = np.random.default_rng(index)
        base = np.stack([x * 255 // size, y * 255 // size, (x + y + index) % 256], axis=2)
        pixels = np.clip(base + rng.integers(-20, 21, size=base.shape), 0, 255).astype(np.uint8)
        part = directory / f"part{index // 500:02d}"  # a few sub-folders, as an archive has
        part.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(part / f"img{index:05d}.png")


def in_process_images_per_s(bundle: Path, images: Path, batch_size: int, repeats: int = 1) -> float:
    model = ugpnet.load(bundle)
    tensors = [torch.from_numpy(decode_image(p.read_bytes()).rgb).permute(2, 0, 1)
               for p in sorted(images.rglob("*.png"))]
    stacked = torch.stack(tensors)
    with torch.inference_mode():
        model(stacked[:batch_size])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for first in range(0, len(stacked), batch_size):
                model(stacked[first:first + batch_size])
            best = min(best, time.perf_counter() - start)
    return len(stacked) / best


# ---------------------------------------------------------------- memory of the Ray cluster

def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(name))
    return children


def cluster_pss_bytes(root: int) -> int:
    """PSS of `root` and all its descendants: this driver and the local Ray it started."""
    children, total, stack = _children_map(), 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


class PeakSampler:
    def __init__(self, interval_s: float = 0.25):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, cluster_pss_bytes(os.getpid()))
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- runs

def start_ray():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)


def pipeline_images_per_s(config: RestoreConfig) -> tuple[float, float]:
    """(images/s over the whole run, images/s while streaming): the whole run includes starting the
    actors (importing torch, loading weights), which a long run amortises; the streaming rate is
    taken over the middle 80 % of outputs (manifest `finished_at`), past start-up and tail."""
    import pyarrow.dataset as pads

    summary = run(config)
    assert summary.errors == 0 and summary.ok == summary.total, summary
    finished = pads.dataset(summary.manifest, format="parquet").to_table(columns=["finished_at"])
    stamps = np.sort(finished["finished_at"].cast("int64").to_numpy()) / 1000.0
    low, high = np.percentile(stamps, [10, 90])
    streaming = 0.8 * len(stamps) / (high - low) if high > low else float("nan")
    return summary.images_per_s, streaming


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="48 images; memory at 100 vs 1000")
    parser.add_argument("--preset", default="small_denoise")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--memory-preset", default="tiny_denoise")
    parser.add_argument("--memory-images", type=int, nargs=2, default=(200, 2000))
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--large", default="4000x3000", help="WxH of the large-photo tile run (section 3)")
    parser.add_argument("--large-preset", default="tiny_denoise")
    parser.add_argument("--large-only", action="store_true", help="run section 3 alone")
    args = parser.parse_args()
    if args.large_only:
        large_photo_section(args)
        return
    if args.quick:
        args.images, args.memory_images = 48, (100, 1000)
    cpus = os.cpu_count()
    work = Path(tempfile.mkdtemp(prefix="ugpnet-bench-"))
    try:
        bundle = ugpnet.save(ugpnet.build(args.preset, seed=0), work / "bundle")
        model = ugpnet.load(bundle)
        images = work / "images"
        make_images(images, args.images, model.input_size)
        print(f"restore throughput: {args.preset} ({model.input_size}x{model.input_size} in, scale {model.scale}), "
              f"{args.images} images, batch {args.batch_size}, {cpus} CPUs, torch {torch.__version__}", flush=True)

        common = dict(input=str(images), model=str(bundle), batch_size=args.batch_size, fit="error",
                      threads_per_actor=1, cpus_per_task=0.5)
        # Fill the CPUs: one 1-thread fused actor per CPU, or one 1-thread actor per module (three on
        # 2 CPUs); the decode/encode tasks get the remaining half CPU.
        fused_actors = cpus
        fused_cpus = round((cpus - 0.5) / fused_actors, 2)
        split_cpus = round((cpus - 0.5) / 3, 2)
        # Machine load drifts (other jobs share these cores): every pipeline run is bracketed by
        # in-process measurements, and compared with the mean of the two beside it.
        start_ray()
        forward = [in_process_images_per_s(bundle, images, args.batch_size)]
        results = {}
        for name, config, detail in (
                ("fused", RestoreConfig(**common, output=str(work / "out-fused"), actors=fused_actors,
                                        cpus_per_actor=fused_cpus), f"{fused_actors} actor(s) x 1 thread"),
                ("split", RestoreConfig(**common, output=str(work / "out-split"), stages="split", actors=1,
                                        cpus_per_actor=split_cpus), "1 actor per module x 1 thread")):
            results[name] = (pipeline_images_per_s(config), detail)
            forward.append(in_process_images_per_s(bundle, images, args.batch_size))
        import ray

        ray.shutdown()
        print(f"  in-process batched forward ({torch.get_num_threads()} threads), before/between/after: "
              + ", ".join(f"{rate:.2f}" for rate in forward) + " images/s")
        for index, (name, ((whole, steady), detail)) in enumerate(results.items()):
            baseline = (forward[index] + forward[index + 1]) / 2
            print(f"  pipeline {name:5} ({detail}): {whole:8.2f} images/s whole run ({whole / baseline:.2f}x), "
                  f"{steady:8.2f} images/s streaming ({steady / baseline:.2f}x) vs in-process {baseline:.2f}")

        if not args.skip_memory:
            memory_bundle = ugpnet.save(ugpnet.build(args.memory_preset, seed=0), work / "memory-bundle")
            size = ugpnet.load(memory_bundle).input_size
            peaks = []
            for count in args.memory_images:
                directory = work / f"memory-{count}"
                make_images(directory, count, size)
                start_ray()
                idle = cluster_pss_bytes(os.getpid())
                with PeakSampler() as sampler:
                    whole, _ = pipeline_images_per_s(RestoreConfig(
                        input=str(directory), output=str(work / f"memory-out-{count}"), model=str(memory_bundle),
                        batch_size=args.batch_size, fit="error", actors=1, threads_per_actor=1))
                peaks.append(sampler.peak)
                print(f"  peak Ray cluster memory, {args.memory_preset} fused, {count:5d} images: "
                      f"{sampler.peak / 2**20:8.1f} MiB (idle cluster {idle / 2**20:.1f} MiB; {whole:.1f} images/s)",
                      flush=True)
                shutil.rmtree(directory, ignore_errors=True)
            growth = peaks[1] / peaks[0] - 1
            print(f"  memory growth {args.memory_images[0]} -> {args.memory_images[1]} images: {growth * 100:+.1f} % "
                  f"(target within +25 %)")
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- a large photo, both transports

def large_photo(width: int, height: int) -> bytes:
    import io

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=2)
    pixels = np.clip(base + rng.integers(-20, 21, size=base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def stage_bytes_per_image(bundle: Path, width: int, height: int, transport: str, stages: str) -> tuple[int, int]:
    """(bytes one image's row carries across the stage boundaries now, the same for the per-tile
    layout fused mode had before it streamed tiles: N input tiles in the transport's tile dtype and N
    output tiles in the fused column's tile dtype). From the image's plan: the shapes are fixed by it
    (restore_memory.shipped_bytes, held to the real stages' arrays by tests/test_restore_memory_units.py);
    running split mode in one process on 12 Mpx would hold several GiB of features at once."""
    from pipelines import restore_memory
    from pipelines.restore_stages import output_dtype, tile_dtype
    from ugpnet.fitting import plan_fit

    model = ugpnet.load(bundle)
    plan = plan_fit(height, width, input_size=model.preset.input_size, scale=model.preset.scale, policy="tile")
    geometry = restore_memory.model_geometry(model.preset, 0)
    shipped = restore_memory.shipped_bytes(plan, geometry, transport, stages)
    if stages != "fused":
        return shipped, shipped  # split's rows were and are tile sets
    s, k = plan.input_size, plan.scale
    per_tile = plan.num_tiles * 3 * (s * s * np.dtype(tile_dtype(transport)).itemsize
                                     + (s * k) ** 2 * np.dtype(output_dtype(transport, "fused", "fused")).itemsize)
    return shipped, per_tile


def large_photo_section(args) -> None:
    """The peak-memory runs first (the figures that matter most on a busy machine), then the bytes."""
    width, height = (int(v) for v in args.large.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="ugpnet-bench-large-"))
    try:
        bundle = ugpnet.save(ugpnet.build(args.large_preset, seed=0), work / "bundle")
        (work / "in").mkdir()
        (work / "in" / "large.jpg").write_bytes(large_photo(width, height))
        print(f"large photo: {width}x{height} through {args.large_preset}, tile mode", flush=True)
        for transport in ("float32", "compact"):
            large_photo_run(args, work, bundle, transport)
        for stages in ("fused", "split"):
            for transport in ("float32", "compact"):
                shipped, before = stage_bytes_per_image(bundle, width, height, transport, stages)
                print(f"  {transport:7} {stages}: {shipped / 2**20:9.1f} MiB through the stage boundaries per "
                      f"image (per-tile layout before streaming: {before / 2**20:.1f} MiB)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def large_photo_run(args, work: Path, bundle: Path, transport: str) -> None:
    """One fused restore of the large photo on a fresh local Ray; prints the cluster's peak PSS."""
    import ray

    start_ray()
    idle = cluster_pss_bytes(os.getpid())
    with PeakSampler() as sampler:
        summary = run(RestoreConfig(input=str(work / "in"), output=str(work / f"out-{transport}"),
                                    model=str(bundle), fit="tile", batch_size=args.batch_size,
                                    transport=transport, threads_per_actor=os.cpu_count()))
    ray.shutdown()
    print(f"  {transport:7} fused run: {summary.ok} ok, {summary.errors} error; peak Ray cluster memory "
          f"{sampler.peak / 2**20:.0f} MiB (idle {idle / 2**20:.0f} MiB) in {summary.duration_s:.0f} s",
          flush=True)


if __name__ == "__main__":
    main()
