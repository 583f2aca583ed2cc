"""Training throughput on this machine: samples/s per stage with Ray Train at 1 and 2 workers, and
the Ray Train overhead against a plain single-process loop of the same steps (side by side, one run).

Ray Train numbers are steady-state (timed inside the workers from the end of each run's first step,
so cluster and worker start-up are excluded; they are reported separately as wall time). The plain
loop uses the same StageTrainer on batches made in advance, with the same thread count as one
Ray worker, so the ratio is what Ray Train + Ray Data cost per step. The Ray pipeline makes its
crops and degradations on the fly in Ray Data tasks on the other CPU, overlapped with the steps by
prefetching; the plain loop does none of that work, so any data-preparation cost that is not hidden
counts against Ray. `--repeats` alternates plain and 1-worker Ray runs (the machine's load drifts)
and prints min/median of the overhead of each pair; `data wait` is the share of a Ray worker's
timed wall time spent waiting for its next batch. Usage:

    python bench/train_throughput.py [--preset small_denoise] [--steps 30] [--batch-size 4]
                                     [--repeats 3] [--no-two-workers] [--stages restoration]
"""

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

STAGES = ("restoration", "synthesis", "fusion")


def plain_loop_samples_per_s(preset: str, uris: list[str], steps: int, batch: int, threads: int,
                             stages: tuple[str, ...] = STAGES) -> dict:
    import ugpnet
    from pipelines.train_data import make_train_sample
    from ugpnet.degradations import DEFAULT_DEGRADATIONS
    from ugpnet.training.hyperparams import default_hyperparams
    from ugpnet.training.trainer import StageTrainer

    torch.set_num_threads(threads)
    model = ugpnet.build(preset, seed=0)
    degradation = DEFAULT_DEGRADATIONS[model.preset.task]
    rows = [make_train_sample({"uri": uris[i % len(uris)]}, model.preset.resolution, degradation)
            for i in range(batch * 4)]
    batches = [(torch.stack([torch.from_numpy(r["lq"]) for r in rows[i:i + batch]]),
                torch.stack([torch.from_numpy(r["gt"]) for r in rows[i:i + batch]]))
               for i in range(0, len(rows), batch)]
    hyper = default_hyperparams(model.preset)
    results = {}
    for stage in stages:
        trainer = StageTrainer(model, stage, replace(hyper.stage(stage), steps=steps + 1, batch_size=batch))
        trainer.train_step(*batches[0])  # first step excluded, as in the Ray workers
        start = time.perf_counter()
        for i in range(steps):
            trainer.train_step(*batches[i % len(batches)])
        results[stage] = steps * batch / (time.perf_counter() - start)
    return results


def ray_train_samples_per_s(preset: str, data: Path, steps: int, batch: int, workers: int, cpus: float,
                            storage: Path, stages: tuple[str, ...] = STAGES) -> tuple[dict, dict, float]:
    from pipelines.train import run
    from pipelines.train_config import build_config

    overrides = [f"hyperparams.{s}.{f}={steps + 1}" for s in STAGES for f in ("checkpoint_interval",
                                                                                 "validation_interval")]
    config = build_config({"preset": preset, "data": str(data), "run_name": f"bench-{workers}w",
                           "storage": str(storage), "workers": workers, "cpus_per_worker": cpus,
                           "steps": [steps + 1] * len(stages), "batch_size": batch, "register_model": False,
                           "stages": list(stages), "tracking_uri": f"sqlite:///{storage / 'mlflow.db'}",
                           "log_interval": 1000}, overrides)
    start = time.perf_counter()
    result = run(config)
    wall = time.perf_counter() - start
    waits = {s: result.stage_metrics[s].get("data_wait_fraction", float("nan")) for s in stages}
    return {s: result.stage_metrics[s]["samples_per_s"] for s in stages}, waits, wall


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def min_median(values: list[float]) -> str:
    return f"{min(values):.1%} / {statistics.median(values):.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small_denoise")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="alternated plain / 1-worker Ray pairs")
    parser.add_argument("--no-two-workers", dest="two_workers", action="store_false")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of the stages")
    args = parser.parse_args()
    stages = tuple(s for s in STAGES if s in args.stages.split(","))

    import ray

    from pipelines.samples import write_sample_photos

    work = Path(tempfile.mkdtemp(prefix="ugpnet-train-bench-"))
    photos = work / "photos"
    uris = [str(p) for p in write_sample_photos(photos, with_skimage=False)]
    (photos / "SOURCES.json").unlink()
    # Ray starts its workers 15 steps nicer than the raylet by default; on a machine shared with
    # other work that alone slowed the train worker against the plain loop (nice 19 against 10 under
    # `nice -n 10`), which is no cost of Ray Train. Both sides run at the driver's niceness here.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False)
    plains, ones, waits = [], [], []
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}: plain loop ({load()})", flush=True)
        plains.append(plain_loop_samples_per_s(args.preset, uris, args.steps, args.batch_size, threads=1,
                                               stages=stages))
        print(f"repeat {repeat + 1}: Ray Train 1 worker ({load()})", flush=True)
        one, wait, wall_one = ray_train_samples_per_s(args.preset, photos, args.steps, args.batch_size, 1, 1.0,
                                                      work / f"r1-{repeat}", stages)
        ones.append(one)
        waits.append(wait)
    two = None
    if args.two_workers:
        print(f"Ray Train 2 workers ({load()})", flush=True)
        # 0.5 CPU per worker leaves room for the data tasks (0.75 each stalled stage 1 on a 2-CPU Ray)
        two, _, wall_two = ray_train_samples_per_s(args.preset, photos, args.steps, args.batch_size, 2, 0.5,
                                                   work / "r2", stages)
    print(f"preset={args.preset} steps/stage={args.steps} batch/worker={args.batch_size} "
          f"torch threads/worker=1 cpus={ray.cluster_resources().get('CPU')} repeats={args.repeats} "
          f"nice={os.nice(0)} RAY_worker_niceness={os.environ['RAY_worker_niceness']} ({load()})")
    print(f"{'stage':12} {'plain s/s':>10} {'ray 1w s/s':>11} {'ray 2w s/s':>11} {'overhead 1w min/median':>23} "
          f"{'data wait':>10} {'2w/1w':>6}")
    for stage in stages:
        overheads = [p[stage] / o[stage] - 1 for p, o in zip(plains, ones, strict=True)]
        plain = statistics.median(p[stage] for p in plains)
        one = statistics.median(o[stage] for o in ones)
        wait = statistics.median(w[stage] for w in waits)
        two_s = f"{two[stage]:>11.2f} " if two else f"{'-':>11} "
        scale = f"{two[stage] / one:>6.2f}" if two else f"{'-':>6}"
        print(f"{stage:12} {plain:>10.2f} {one:>11.2f} {two_s}{min_median(overheads):>23} {wait:>10.1%} {scale}")
    print(f"wall time incl. start-up for the stages: 1 worker {wall_one:.0f}s"
          + (f", 2 workers {wall_two:.0f}s" if two else ""))
    print("overhead 1w = plain/ray − 1 per alternated pair (target ≤ 10%); samples/s: medians, all workers' samples")


if __name__ == "__main__":
    main()
