"""`ugpnet restore` throughput and memory on this machine, measured side by side in one run.

1. Throughput: the same model on the same images (native size, so fitting is a no-op) as
   - in-process batched forward: decoded tensors straight into `model(...)` (no I/O, no Ray),
   - the restore pipeline, fused (one actor pool) and split (a pool per module), on a local Ray with
     this machine's CPUs (Ray itself is started before the clock starts). Two rates: the whole run,
     listing to summary, which includes starting worker processes (Python, `import torch`, loading
     the weights: tens of seconds on 2 busy cores), and the streaming rate over the middle 80 % of
     outputs, which is what a long archive run sees.
   The in-process side is its best configuration: all threads, the fastest of several batch sizes,
   measured before and after the pipeline runs. Target: the fused pipeline's whole run at 2,000
   images >= 0.9x the best in-process rate.
2. Streaming: peak memory (PSS, so shared object-store pages count once) of the whole local Ray
   cluster (driver, GCS, raylet, workers) during the fused runs of 200 and of 2,000 images, each on a
   fresh cluster. Target: the 2,000-image peak within +10 % of the 200-image peak.
3. A large photo (--large, 4000x3000 = 12 Mpx by default) in `tile` mode, with the old transport
   (`float32`) and the new (`compact`: uint16 canvas/tiles; fused images as 8-bit levels, split's
   output tiles float32): the peak PSS of the whole cluster during a fused run, and the bytes per
   image that cross the stage boundaries (what the object store carries) fused and split, from the
   image's plan (exact: the same formula is held to the real stages' arrays in
   tests/test_restore_memory_units.py). Fused mode streams tiles (the rows carry the canvas and
   the assembled image); beside its bytes the section prints what the per-tile layout of before
   (N tiles in, N tiles out) carried for the same plan. The peak PSS of before was measured by
   running the same fused runs on a checkout from before streaming (recorded in docs/execution.md).

    python bench/restore_throughput.py            # tiny_denoise: fused 200 and 2,000 images, split 200
    python bench/restore_throughput.py --quick    # 40 and 200 images: a smoke run
    python bench/restore_throughput.py --preset small_denoise --size 256 --skip-split
                                                  # the default models' size on 256² photos (9 tiles each)
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
from pipelines.restore.run import RestoreConfig, run
from ugpnet.fitting import fit_and_run, plan_fit
from ugpnet.images import decode_image, encode_image


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


def restore_batches(model, tensors: list[torch.Tensor], batch_size: int, fit: str):
    """The in-process restore of `tensors` ((3,H,W) each), one list of outputs per call of `batch_size`:
    native-size images stacked `batch_size` at a time (`fit="error"`), or each image cut into model-size
    tiles run `batch_size` tiles at a time and blended back (`fit="tile"`, ugpnet.fitting.fit_and_run),
    which is what a user's own script over full-size photos does."""
    if fit == "error":
        for first in range(0, len(tensors), batch_size):
            yield list(model(torch.stack(tensors[first:first + batch_size])))
        return
    for tensor in tensors:
        yield [fit_and_run(tensor, model, input_size=model.input_size, scale=model.scale, policy="tile",
                           batch_size=batch_size)]


def in_process_images_per_s(bundle: Path, images: Path, batch_size: int, fit: str, repeats: int = 1) -> float:
    """Best of `repeats` passes (after a warm-up batch) of the batched forward over the decoded
    images (no I/O, no Ray)."""
    model = ugpnet.load(bundle)
    tensors = [torch.from_numpy(decode_image(p.read_bytes()).rgb).permute(2, 0, 1)
               for p in sorted(images.rglob("*.png"))]
    with torch.inference_mode():
        next(restore_batches(model, tensors[:batch_size], batch_size, fit))  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _outputs in restore_batches(model, tensors, batch_size, fit):
                pass
            best = min(best, time.perf_counter() - start)
    return len(tensors) / best


def in_process_job_images_per_s(bundle: Path, images: Path, batch_size: int, fit: str, output: Path) -> float:
    """The same job as the pipeline in one process, sequentially: read each file, decode, batched
    forward (tiled when `fit` is tile), encode as PNG, write; after a warm-up batch. All threads, no Ray."""
    model = ugpnet.load(bundle)
    paths = sorted(images.rglob("*.png"))
    output.mkdir(parents=True, exist_ok=True)
    # Native images are read a batch at a time; tiled ones one at a time (a photo is its own batch of tiles).
    group = batch_size if fit == "error" else 1
    with torch.inference_mode():
        model(torch.rand(batch_size, 3, model.input_size, model.input_size))  # warm-up
        start = time.perf_counter()
        for first in range(0, len(paths), group):
            chunk = paths[first:first + group]
            tensors = [torch.from_numpy(decode_image(p.read_bytes()).rgb).permute(2, 0, 1) for p in chunk]
            restored = [image for outputs in restore_batches(model, tensors, batch_size, fit) for image in outputs]
            for path, image in zip(chunk, restored, strict=True):
                (output / path.name).write_bytes(encode_image(image.permute(1, 2, 0).numpy(), fmt="png"))
        elapsed = time.perf_counter() - start
    shutil.rmtree(output, ignore_errors=True)
    return len(paths) / elapsed


def best_in_process(bundle: Path, images: Path, batch_sizes: tuple[int, ...], fit: str, work: Path) -> dict:
    """The fastest in-process configurations (all threads, the best batch size) of the forward alone
    and of the whole job: {"forward": (images/s, batch), "job": (images/s, batch)}."""
    threads = torch.get_num_threads()
    best = {}
    for kind, measure in (("forward", lambda b: in_process_images_per_s(bundle, images, b, fit)),
                          ("job", lambda b: in_process_job_images_per_s(bundle, images, b, fit, work / "in-process"))):
        rates = {batch: measure(batch) for batch in batch_sizes}
        batch = max(rates, key=rates.get)
        print(f"  in-process {kind:7} ({threads} threads): "
              + ", ".join(f"batch {b} {r:.2f}" for b, r in rates.items()) + f" images/s; load {_load()}", flush=True)
        best[kind] = (rates[batch], batch)
    return best


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


def cluster_pids(root: int) -> list[int]:
    """`root` and all its descendants: this driver and the local Ray it started."""
    children, found, stack = _children_map(), [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def cluster_pss_bytes(root: int) -> int:
    """PSS of `root` and all its descendants: this driver and the local Ray it started."""
    total = 0
    for pid in cluster_pids(root):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_kind(pid: int) -> str:
    """What a process of the local cluster is, from its title (Ray's workers retitle themselves
    `ray::<what runs in them>`): the driver, a Ray daemon, a model actor, a task worker."""
    if pid == os.getpid():
        return "driver (Ray Data executor, this bench)"
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "gone"
    if not title:  # an exiting process has no command line left
        return "gone"
    if "ModelStage" in title:
        return "model actors"
    if title.startswith(("ray::IDLE", "ray::MapBatches", "ray::Write", "ray::ReadFiles", "ray::FromItems")):
        return "task workers (read/decode, encode/write, idle)"
    if title.startswith("ray::"):  # Ray Data's helper actors (_StatsActor, …), the dashboard agent
        return "Ray helper: " + title[5:].split("(")[0].split(" ")[0]
    for daemon in ("gcs_server", "raylet", "dashboard", "log_monitor", "runtime_env", "monitor.py"):
        if daemon in title:
            return f"Ray daemon: {daemon}"
    return "other: " + Path(title.split(" ", 1)[0]).name


def process_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


class ClusterSampler:
    """The CPU seconds each process of the local cluster used while sampled, once a second (the last
    reading of a process that exits is kept), summed by process kind; and the cluster's peak PSS every
    `pss_every` samples: reading smaps_rollup walks each process's mappings, Ray's shared object store
    included, and at 4 Hz took about 8 % of a core of the driver (py-spy), a visible share of 2 CPUs.
    The report prints what the sampling thread itself used."""

    def __init__(self, interval_s: float = 1.0, pss_every: int = 3):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self.pss_every, self._samples, self.own_cpu_s = pss_every, 0, 0.0
        self._first: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = self._wall_s = 0.0
        self._sample()  # the baseline of the processes already running (daemons, idle workers)
        self._first = {pid: cpu for pid, (_, cpu) in self._last.items()}

    def _sample(self):
        pids = cluster_pids(os.getpid())
        for pid in pids:
            cpu = process_cpu_s(pid)
            if cpu is None:
                continue
            # Read the title each time: an idle worker becomes an actor or a task's worker later.
            kind = process_kind(pid)
            if kind == "gone" and pid in self._last:
                kind = self._last[pid][0]
            self._last[pid] = (kind, cpu)
        if self._samples % self.pss_every == 0:
            self.peak = max(self.peak, cluster_pss_bytes(os.getpid()))
        self._samples += 1

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            self._sample()
        self.own_cpu_s = time.thread_time()  # this thread's CPU: what the sampling itself cost the driver

    def cpu_by_kind(self) -> dict[str, float]:
        by_kind: dict[str, float] = {}
        for pid, (kind, cpu) in self._last.items():
            by_kind[kind] = by_kind.get(kind, 0.0) + cpu - self._first.get(pid, 0.0)
        return dict(sorted(by_kind.items(), key=lambda item: -item[1]))

    def cpu_report(self, images: int) -> str:
        """CPU seconds per kind, per image, and the share of the machine's CPU time it used."""
        capacity, by_kind = self._wall_s * os.cpu_count(), self.cpu_by_kind()
        lines = [f"      {kind:48} {cpu:7.1f} CPU s ({cpu / images * 1000:6.1f} ms/image, "
                 f"{cpu / capacity * 100:4.1f} % of {os.cpu_count()} CPUs)"
                 for kind, cpu in by_kind.items() if cpu >= 0.05]
        lines.append(f"      {'  of which this sampler (in the driver)':48} {self.own_cpu_s:7.1f} CPU s")
        used = sum(by_kind.values())
        lines.append(f"      {'not used by the cluster (idle or elsewhere)':48} {capacity - used:7.1f} CPU s "
                     f"({(capacity - used) / capacity * 100:4.1f} %) over {self._wall_s:.1f} s")
        return "\n".join(lines)

    def __enter__(self):
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self._wall_s = time.perf_counter() - self._started


# ---------------------------------------------------------------- runs

def start_ray():
    import ray

    from pipelines.common.cluster import keep_idle_workers_for_a_local_cluster

    if ray.is_initialized():
        ray.shutdown()
    keep_idle_workers_for_a_local_cluster()  # as `ugpnet restore` starts its local cluster
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
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 vs 200 images")
    parser.add_argument("--preset", default="tiny_denoise")
    parser.add_argument("--size", type=int, default=None,
                        help="side of the square test images (default: the model's input size, run natively); "
                             "any other size runs in `tile` mode on both sides, as full-size photos do")
    parser.add_argument("--images", type=int, nargs=2, default=(200, 2000),
                        help="the two fused runs: memory growth from the first to the second; throughput of both")
    parser.add_argument("--baseline-images", type=int, default=200, help="images in the in-process measurement")
    parser.add_argument("--baseline-batches", type=int, nargs="+", default=(1, 4, 16, 64))
    parser.add_argument("--batch-size", type=int, default=None, help="pipeline batch (default: the actor's policy)")
    parser.add_argument("--skip-split", action="store_true", help="no split-mode run (at the first image count)")
    parser.add_argument("--large", default="4000x3000", help="WxH of the large-photo tile run (section 3)")
    parser.add_argument("--large-preset", default="tiny_denoise")
    parser.add_argument("--batch-size-large", type=int, default=8, dest="large_batch_size")
    parser.add_argument("--large-only", action="store_true", help="run section 3 alone")
    args = parser.parse_args()
    if args.large_only:
        args.batch_size = args.large_batch_size
        large_photo_section(args)
        return
    if args.quick:
        args.images, args.baseline_images = (40, 200), 40
    cpus = os.cpu_count()
    work = Path(tempfile.mkdtemp(prefix="ugpnet-bench-"))
    try:
        bundle = ugpnet.save(ugpnet.build(args.preset, seed=0), work / "bundle")
        model = ugpnet.load(bundle)
        size = args.size or model.input_size
        fit = "error" if size == model.input_size else "tile"
        tiles = plan_fit(size, size, input_size=model.input_size, scale=model.scale, policy="tile").num_tiles
        sets = {}
        for count in sorted({*args.images, args.baseline_images}):
            sets[count] = work / f"images-{count}"
            make_images(sets[count], count, size)
        print(f"restore throughput: {args.preset} ({model.input_size}x{model.input_size} in, scale {model.scale}), "
              f"{size}x{size} images ({'native' if fit == 'error' else f'{tiles} tiles each'}), "
              f"{cpus} CPUs, torch {torch.__version__}, load {_load()}", flush=True)

        # The best in-process configurations, measured before and after the pipeline runs (load drifts):
        # the pipeline is compared with the better of the two.
        batches = tuple(args.baseline_batches)
        baseline = [best_in_process(bundle, sets[args.baseline_images], batches, fit, work)]
        # Fill the CPUs: one 1-thread fused actor per CPU, or one 1-thread actor per module (three on
        # 2 CPUs). The read/decode and the encode/write stage each get a quarter CPU, so that both can
        # run beside the actors: with a single free slot Ray Data runs the read stage to its end
        # before the first output is written (the outputs wait in the object store meanwhile).
        task_cpus = 0.25
        actor_cpus = cpus - 2 * task_cpus
        common = dict(model=str(bundle), batch_size=args.batch_size, fit=fit, threads_per_actor=1,
                      cpus_per_task=task_cpus)
        fused = dict(actors=cpus, cpus_per_actor=round(actor_cpus / cpus, 2))
        runs = [(f"fused {count}", count, RestoreConfig(**common, **fused, input=str(sets[count]),
                                                               output=str(work / f"out-fused-{count}")))
                for count in args.images]
        if not args.skip_split:
            count = args.images[0]
            runs.append((f"split {count}", count, RestoreConfig(
                **common, input=str(sets[count]), output=str(work / f"out-split-{count}"), stages="split",
                actors=1, cpus_per_actor=round(actor_cpus / 3, 2))))
        results = {}
        for name, count, config in runs:
            start_ray()  # a fresh cluster per run: its peak memory is this run's alone
            idle = cluster_pss_bytes(os.getpid())
            with ClusterSampler() as sampler:
                whole, steady = pipeline_images_per_s(config)
            results[name] = (whole, steady, sampler.peak, idle)
            print(f"  pipeline {name:10}: {whole:6.2f} images/s whole run, {steady:6.2f} streaming; peak Ray "
                  f"cluster memory {sampler.peak / 2**20:7.1f} MiB (idle {idle / 2**20:.1f}); load {_load()}",
                  flush=True)
            print(sampler.cpu_report(count), flush=True)
        import ray

        ray.shutdown()
        baseline.append(best_in_process(bundle, sets[args.baseline_images], batches, fit, work))
        for kind in ("forward", "job"):
            best_rate, best_batch = max(b[kind] for b in baseline)
            print(f"  best in-process {kind}: {best_rate:.2f} images/s (batch {best_batch}, "
                  f"{torch.get_num_threads()} threads; before/after {baseline[0][kind][0]:.2f}/"
                  f"{baseline[1][kind][0]:.2f})")
            for name, (whole, steady, _, _) in results.items():
                target = name == f"fused {args.images[1]}" and kind == "job"
                print(f"    pipeline {name:10} / best in-process {kind}: whole run {whole / best_rate:.2f}x, "
                      f"streaming {steady / best_rate:.2f}x"
                      + ("  (target: whole run >= 0.9x at 2,000 images)" if target else ""))
        small, large = (results[f"fused {count}"][2] for count in args.images)
        print(f"  memory growth {args.images[0]} -> {args.images[1]} images (fused): "
              f"{(large / small - 1) * 100:+.1f} % (target within +10 %)")
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def _load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


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


# What fused mode's output tiles travelled as before it streamed tiles (commit a5e8d7f): a record of
# the old layout, not today's rule, which no longer ships output tiles in fused mode at all.
BEFORE_STREAMING_OUTPUT_DTYPE = {"compact": np.float16, "float32": np.float32}


def stage_bytes_per_image(bundle: Path, width: int, height: int, transport: str, stages: str) -> tuple[int, int]:
    """(bytes one image's row carries across the stage boundaries now, the same for the per-tile
    layout fused mode had before it streamed tiles: N input tiles in the transport's tile dtype and N
    output tiles in the dtype the fused column's tiles had then, BEFORE_STREAMING_OUTPUT_DTYPE).
    From the image's plan: the shapes are fixed by it
    (restore_memory.shipped_bytes, held to the real stages' arrays by tests/test_restore_memory_units.py);
    running split mode in one process on 12 Mpx would hold several GiB of features at once."""
    from pipelines.restore import memory as restore_memory
    from pipelines.restore.stages import tile_dtype

    model = ugpnet.load(bundle)
    plan = plan_fit(height, width, input_size=model.preset.input_size, scale=model.preset.scale, policy="tile")
    geometry = restore_memory.model_geometry(model.preset, 0)
    shipped = restore_memory.shipped_bytes(plan, geometry, transport, stages)
    if stages != "fused":
        return shipped, shipped  # split's rows were and are tile sets
    s, k = plan.input_size, plan.scale
    per_tile = plan.num_tiles * 3 * (s * s * np.dtype(tile_dtype(transport)).itemsize
                                     + (s * k) ** 2 * np.dtype(BEFORE_STREAMING_OUTPUT_DTYPE[transport]).itemsize)
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
    with ClusterSampler() as sampler:
        summary = run(RestoreConfig(input=str(work / "in"), output=str(work / f"out-{transport}"),
                                    model=str(bundle), fit="tile", batch_size=args.batch_size,
                                    transport=transport, threads_per_actor=os.cpu_count()))
    ray.shutdown()
    print(f"  {transport:7} fused run: {summary.ok} ok, {summary.errors} error; peak Ray cluster memory "
          f"{sampler.peak / 2**20:.0f} MiB (idle {idle / 2**20:.0f} MiB) in {summary.duration_s:.0f} s",
          flush=True)


if __name__ == "__main__":
    main()
