"""Training throughput on this machine: samples/s per stage with Ray Train at 1 and 2 workers, and
the Ray Train overhead against a plain single-process loop of the same steps (side by side, one run).

Ray Train numbers are steady-state (timed inside the workers from the end of each run's first step,
so cluster and worker start-up are excluded; the 2-worker run also prints its wall time). The plain
loop uses the same StageTrainer on batches made in advance, with the same thread count as one
Ray worker, so the ratio is what Ray Train + Ray Data cost per step. The Ray pipeline makes its
crops and degradations on the fly in Ray Data tasks on the other CPU, overlapped with the steps by
prefetching; the plain loop does none of that work, so any data-preparation cost that is not hidden
counts against Ray. Each stage is timed in pairs, a plain run and a 1-worker Ray run of that stage
alone back to back (the machine's load drifts), the side that goes first alternating per repeat;
`--repeats` sets the pairs per stage and the overhead is printed as min/median over them. `data wait`
is the share of a Ray worker's timed wall time spent waiting for its next batch. Both sides also
split the training thread's time with Linux's scheduler counters: `cpu s/sample` (its CPU time per
sample: more work in the step shows here, whatever the load) and the shares of wall time it ran or
was runnable but waiting for a CPU (other processes, Ray's own or not, holding both cores). Usage:

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


def plain_loop_stage(preset: str, uris: list[str], steps: int, batch: int, threads: int, stage: str) -> dict:
    """One stage of a fresh model (as a Ray run of that stage alone starts from the initial bundle),
    timed by the same ThroughputClock as the Ray workers."""
    import ugpnet
    from pipelines.train.data import make_train_sample
    from pipelines.train.loop import ThroughputClock
    from ugpnet.tasks import TRAINING_DEGRADATIONS
    from ugpnet.training.hyperparams import default_hyperparams
    from ugpnet.training.trainer import StageTrainer

    torch.set_num_threads(threads)
    model = ugpnet.build(preset, seed=0)
    degradation = TRAINING_DEGRADATIONS[model.preset.task]
    rows = [make_train_sample({"uri": uris[i % len(uris)]}, model.preset.resolution, degradation)
            for i in range(batch * 4)]
    batches = [(torch.stack([torch.from_numpy(r["lq"]) for r in rows[i:i + batch]]),
                torch.stack([torch.from_numpy(r["gt"]) for r in rows[i:i + batch]]))
               for i in range(0, len(rows), batch)]
    hyper = default_hyperparams(model.preset)
    trainer = StageTrainer(model, stage, replace(hyper.stage(stage), steps=steps + 1, batch_size=batch))
    clock = ThroughputClock(batch)
    for i in range(steps + 1):  # the first step is not timed, as in the Ray workers
        trainer.train_step(*batches[i % len(batches)])
        clock.tick()
    return {"samples_per_s": clock.samples_per_s, "data_wait_fraction": 0.0} | clock.cpu_fractions()


def ray_train_stages(preset: str, data: Path, steps: int, batch: int, workers: int, cpus: float,
                     storage: Path, stages: tuple[str, ...]) -> tuple[dict, float]:
    """{stage: the workers' steady-state metrics} of one `ugpnet train` run, and its wall time."""
    from pipelines.train.config import build_config
    from pipelines.train.run import run

    overrides = [f"hyperparams.{s}.{f}={steps + 1}" for s in STAGES for f in ("checkpoint_interval",
                                                                                 "validation_interval")]
    config = build_config({"preset": preset, "data": str(data), "run_name": f"bench-{workers}w",
                           "storage": str(storage), "workers": workers, "cpus_per_worker": cpus,
                           "steps": [steps + 1] * len(stages), "batch_size": batch, "register_model": False,
                           "stages": list(stages), "tracking_uri": f"sqlite:///{storage / 'mlflow.db'}",
                           "log_interval": 1000}, overrides)
    start = time.perf_counter()
    result = run(config)
    return {s: result.stage_metrics[s] for s in stages}, time.perf_counter() - start


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def min_median(values: list[float]) -> str:
    return f"{min(values):.1%} / {statistics.median(values):.1%}"


def median_of(runs: list[dict], key: str) -> float:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else float("nan")


def cpu_seconds_per_sample(metrics: dict) -> float:
    """The training thread's CPU time per sample: what the step itself costs, whatever the load."""
    return metrics.get("on_cpu_fraction", float("nan")) / metrics["samples_per_s"]


def alternated_pairs(args, stages, uris, photos, work) -> dict[str, list[tuple[dict, dict]]]:
    """Per stage and repeat, a plain run and a 1-worker Ray run of that stage back to back (the load
    of a shared machine drifts over minutes: comparing all plain stages first with all Ray stages
    later let a load change between them read as overhead); which side goes first alternates."""
    pairs = {stage: [] for stage in stages}
    for repeat in range(args.repeats):
        for stage in stages:
            sides = {}
            for side in (("plain", "ray") if repeat % 2 == 0 else ("ray", "plain")):
                print(f"repeat {repeat + 1} {stage}: {side} ({load()})", flush=True)
                if side == "plain":
                    sides[side] = plain_loop_stage(args.preset, uris, args.steps, args.batch_size, 1, stage)
                else:
                    metrics, _ = ray_train_stages(args.preset, photos, args.steps, args.batch_size, 1, 1.0,
                                                  work / f"r1-{repeat}-{stage}", (stage,))
                    sides[side] = metrics[stage]
            pairs[stage].append((sides["plain"], sides["ray"]))
            plain, ray = sides["plain"], sides["ray"]
            print(f"  {stage} pair {repeat + 1}: overhead {plain['samples_per_s'] / ray['samples_per_s'] - 1:.1%}, "
                  f"cpu s/sample {cpu_seconds_per_sample(plain):.3f} / {cpu_seconds_per_sample(ray):.3f} ({load()})",
                  flush=True)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small_denoise")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="alternated plain / 1-worker Ray pairs per stage")
    parser.add_argument("--no-two-workers", dest="two_workers", action="store_false")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of the stages")
    args = parser.parse_args()
    stages = tuple(s for s in STAGES if s in args.stages.split(","))

    import ray

    from pipelines.data.samples import write_sample_photos

    work = Path(tempfile.mkdtemp(prefix="ugpnet-train-bench-"))
    photos = work / "photos"
    uris = [str(p) for p in write_sample_photos(photos, with_skimage=False)]
    (photos / "SOURCES.json").unlink()
    # Ray starts its workers 15 steps nicer than the raylet by default; on a machine shared with
    # other work that alone slowed the train worker against the plain loop (nice 19 against 10 under
    # `nice -n 10`), which is no cost of Ray Train. Both sides run at the driver's niceness here.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False)
    pairs = alternated_pairs(args, stages, uris, photos, work)
    two, wall_two = None, 0.0
    if args.two_workers:
        print(f"Ray Train 2 workers ({load()})", flush=True)
        # 0.5 CPU per worker leaves room for the data tasks (0.75 each stalled stage 1 on a 2-CPU Ray)
        two, wall_two = ray_train_stages(args.preset, photos, args.steps, args.batch_size, 2, 0.5,
                                         work / "r2", stages)
    print(f"preset={args.preset} steps/stage={args.steps} batch/worker={args.batch_size} "
          f"torch threads/worker=1 cpus={ray.cluster_resources().get('CPU')} repeats={args.repeats} "
          f"nice={os.nice(0)} RAY_worker_niceness={os.environ['RAY_worker_niceness']} ({load()})")
    print(f"{'stage':12} {'plain s/s':>10} {'ray 1w s/s':>11} {'ray 2w s/s':>11} {'overhead 1w min/median':>23} "
          f"{'data wait':>10} {'cpu s/sample plain/ray':>23} {'on cpu plain/ray':>17} {'runnable plain/ray':>19} "
          f"{'2w/1w':>6}")
    for stage in stages:
        plains = [p for p, _ in pairs[stage]]
        ones = [o for _, o in pairs[stage]]
        overheads = [p["samples_per_s"] / o["samples_per_s"] - 1 for p, o in pairs[stage]]
        plain, one = median_of(plains, "samples_per_s"), median_of(ones, "samples_per_s")
        cpu = "/".join(f"{statistics.median(cpu_seconds_per_sample(r) for r in runs):.3f}" for runs in (plains, ones))
        on_cpu = "/".join(f"{median_of(runs, 'on_cpu_fraction'):.0%}" for runs in (plains, ones))
        runnable = "/".join(f"{median_of(runs, 'runnable_fraction'):.0%}" for runs in (plains, ones))
        two_s = f"{two[stage]['samples_per_s']:>11.2f} " if two else f"{'-':>11} "
        scale = f"{two[stage]['samples_per_s'] / one:>6.2f}" if two else f"{'-':>6}"
        print(f"{stage:12} {plain:>10.2f} {one:>11.2f} {two_s}{min_median(overheads):>23} "
              f"{median_of(ones, 'data_wait_fraction'):>10.1%} {cpu:>23} {on_cpu:>17} {runnable:>19} {scale}")
    if two:
        print(f"wall time incl. start-up of the 2-worker run: {wall_two:.0f}s")
    print("overhead 1w = plain/ray − 1 per alternated pair (target ≤ 10%); samples/s: medians, all workers' "
          "samples;\ncpu s/sample: the training thread's CPU time per sample (the step's own cost); on cpu / "
          "runnable: shares of the timed wall time the training thread ran / waited for a CPU (load)")


if __name__ == "__main__":
    main()
