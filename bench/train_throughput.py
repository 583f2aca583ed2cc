"""Training throughput on this machine: samples/s per stage with Ray Train at 1 and 2 workers, and
the Ray Train overhead against a plain single-process loop of the same steps (side by side, one run).

Ray Train numbers are steady-state (timed inside the workers from the end of each run's first step,
so cluster and worker start-up are excluded; they are reported separately as wall time). The plain
loop uses the same StageTrainer on batches made in advance, with the same thread count as one
Ray worker, so the ratio is what Ray Train + Ray Data cost per step. Usage:

    python bench/train_throughput.py [--preset small_denoise] [--steps 30] [--batch-size 4]
"""

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

STAGES = ("restoration", "synthesis", "fusion")


def plain_loop_samples_per_s(preset: str, uris: list[str], steps: int, batch: int, threads: int) -> dict:
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
    for stage in STAGES:
        trainer = StageTrainer(model, stage, replace(hyper.stage(stage), steps=steps + 1, batch_size=batch))
        trainer.train_step(*batches[0])  # first step excluded, as in the Ray workers
        start = time.perf_counter()
        for i in range(steps):
            trainer.train_step(*batches[i % len(batches)])
        results[stage] = steps * batch / (time.perf_counter() - start)
    return results


def ray_train_samples_per_s(preset: str, data: Path, steps: int, batch: int, workers: int, cpus: float,
                            storage: Path) -> tuple[dict, float]:
    from pipelines.train import run
    from pipelines.train_config import build_config

    overrides = [f"hyperparams.{s}.{f}={steps + 1}" for s in STAGES for f in ("checkpoint_interval",
                                                                                 "validation_interval")]
    config = build_config({"preset": preset, "data": str(data), "run_name": f"bench-{workers}w",
                           "storage": str(storage), "workers": workers, "cpus_per_worker": cpus,
                           "steps": [steps + 1] * 3, "batch_size": batch, "register_model": False,
                           "tracking_uri": f"sqlite:///{storage / 'mlflow.db'}", "log_interval": 1000}, overrides)
    start = time.perf_counter()
    result = run(config)
    wall = time.perf_counter() - start
    return {s: result.stage_metrics[s]["samples_per_s"] for s in STAGES}, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small_denoise")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    import ray

    from pipelines.samples import write_sample_photos

    work = Path(tempfile.mkdtemp(prefix="ugpnet-train-bench-"))
    photos = work / "photos"
    uris = [str(p) for p in write_sample_photos(photos, with_skimage=False)]
    (photos / "SOURCES.json").unlink()
    plain = plain_loop_samples_per_s(args.preset, uris, args.steps, args.batch_size, threads=1)
    ray.init(num_cpus=2, include_dashboard=False)
    one, wall_one = ray_train_samples_per_s(args.preset, photos, args.steps, args.batch_size, 1, 1.0, work / "r1")
    # 0.5 CPU per worker leaves room for the data tasks (0.75 each stalled stage 1 on a 2-CPU Ray)
    two, wall_two = ray_train_samples_per_s(args.preset, photos, args.steps, args.batch_size, 2, 0.5, work / "r2")
    print(f"preset={args.preset} steps/stage={args.steps} batch/worker={args.batch_size} "
          f"torch threads/worker=1 cpus={ray.cluster_resources().get('CPU')}")
    print(f"{'stage':12} {'plain s/s':>10} {'ray 1w s/s':>11} {'ray 2w s/s':>11} {'overhead 1w':>12} {'2w/1w':>6}")
    for stage in STAGES:
        overhead = plain[stage] / one[stage] - 1
        print(f"{stage:12} {plain[stage]:>10.2f} {one[stage]:>11.2f} {two[stage]:>11.2f} {overhead:>11.1%} "
              f"{two[stage] / one[stage]:>6.2f}")
    print(f"wall time incl. start-up for three stages: 1 worker {wall_one:.0f}s, 2 workers {wall_two:.0f}s")
    print("overhead 1w = plain/ray − 1 (target ≤ 15%); samples/s counts all workers' samples")


if __name__ == "__main__":
    main()
