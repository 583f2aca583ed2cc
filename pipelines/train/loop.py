"""What each Ray Train worker runs for one stage: resume, iterate its data shard, step, validate,
checkpoint. Metrics go to the stage's MLflow run from rank 0 only."""

import tempfile
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file

from pipelines.common.models import payload_model
from ugpnet.checkpoint import WEIGHTS_FILE
from ugpnet.state_dicts import load_state_dict_strict
from ugpnet.training.hyperparams import TrainHyperparams
from ugpnet.training.trainer import StageTrainer
from ugpnet.vgg import PerceptualWeights

MODEL_FILE = WEIGHTS_FILE  # a checkpoint's weights, named as a bundle's
TRAINER_FILE = "trainer_state.pt"      # optimiser/scheduler tensors; read back with weights_only=True
DISCRIMINATOR_KEY = "discriminator"
# Batches fetched ahead of the step. Ray Data's default of 1 left each step waiting 0.35–0.53 s for its
# batch (bench/train_throughput.py at 1 worker: 3.2 samples/s against 5.7 in a plain loop, while 2 workers
# drew 5.4 samples/s from the same pipeline, so the producer was fast enough and latency was the cost).
PREFETCH_BATCHES = 4


def save_training_checkpoint(directory: Path, trainer: StageTrainer) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, str(directory / MODEL_FILE))
    torch.save(trainer.state_dict(), directory / TRAINER_FILE)


def restore_training_checkpoint(directory: Path, trainer: StageTrainer) -> None:
    load_state_dict_strict(trainer.model, load_file(str(directory / MODEL_FILE)), str(directory / MODEL_FILE))
    trainer.load_state_dict(torch.load(directory / TRAINER_FILE, map_location=trainer.device, weights_only=True))


class RankZeroLogger:
    """Logs to one MLflow run by id with the client API (no global active run in the worker)."""

    def __init__(self, tracking_uri: str | None, run_id: str | None, enabled: bool):
        self.enabled = enabled and run_id is not None
        if self.enabled:
            import mlflow

            self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
            self.run_id = run_id

    def metrics(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        if self.enabled:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(f"{prefix}{k}", float(v), now, step)
                                                        for k, v in values.items()])

    def grid(self, lq, outputs, gt, step: int) -> None:
        if self.enabled:
            from pipelines.common.sample_grid import sample_grid

            self.client.log_image(self.run_id, sample_grid(lq, outputs, gt), key="samples", step=step)


def thread_schedstat() -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for a CPU) of the calling thread so far, from
    Linux's /proc/self/task/<tid>/schedstat; None where that file does not exist."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as stats:
            on_cpu, waiting, _ = stats.read().split()
    except (OSError, ValueError):
        return None
    return int(on_cpu) / 1e9, int(waiting) / 1e9


class ThroughputClock:
    """Samples/s over this session's steps, timed from the end of its first step (so start-up,
    resumption and the first data batch are not counted). `waiting` is the time between asking the
    iterator for a batch (`asking`) and having it (`fetched`): fetch, collate, a starved pipeline.

    It also splits the timed wall time of the thread that ticks it (the training thread) into time on
    a CPU and time runnable but waiting for one (another process or thread held both cores), so a
    slower step can be told apart as more work done or as less CPU given. The rest is time asleep
    (blocked on the batch iterator, the GIL, I/O)."""

    def __init__(self, samples_per_step: int):
        self.samples_per_step, self.start, self.steps = samples_per_step, None, 0
        self.asked_at = None
        self.waiting = 0.0
        self.sched_start = None

    def asking(self) -> None:
        self.asked_at = time.perf_counter()

    def fetched(self) -> None:
        if self.asked_at is not None and self.start is not None:
            self.waiting += time.perf_counter() - self.asked_at

    def tick(self) -> None:
        if self.start is None:
            self.start = time.perf_counter()
            self.sched_start = thread_schedstat()
        else:
            self.steps += 1

    def _elapsed(self) -> float:
        return time.perf_counter() - self.start if self.start is not None else 0.0

    @property
    def samples_per_s(self) -> float:
        elapsed = self._elapsed()
        return self.steps * self.samples_per_step / elapsed if elapsed > 0 else 0.0

    @property
    def data_wait_fraction(self) -> float:
        """Share of the timed wall time spent waiting for the next batch (fetch, collate, a starved pipeline)."""
        elapsed = self._elapsed()
        return self.waiting / elapsed if elapsed > 0 else 0.0

    def cpu_fractions(self) -> dict[str, float]:
        """`on_cpu_fraction` and `runnable_fraction` of the timed wall time, for the thread that
        ticked; empty where the scheduler's counters are not readable. Read from the ticking thread."""
        now, elapsed = thread_schedstat(), self._elapsed()
        if now is None or self.sched_start is None or elapsed <= 0:
            return {}
        return {"on_cpu_fraction": (now[0] - self.sched_start[0]) / elapsed,
                "runnable_fraction": (now[1] - self.sched_start[1]) / elapsed}


def ddp_wrapper(world_size: int):
    if world_size == 1:
        return lambda module: module
    from torch.nn.parallel import DistributedDataParallel

    return lambda module: DistributedDataParallel(module)


def train_stage_loop(config: dict) -> None:
    """`train_loop_per_worker` of the stage's TorchTrainer (config: see pipelines.train.run.stage_loop_config)."""
    import ray
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config["threads"])))
    stage = config["stage"]
    hyperparams = TrainHyperparams.from_dict(config["hyperparams"])
    hp = hyperparams.stage(stage)

    payload = ray.get(config["start_payload"])
    model = payload_model(payload, assign=False)  # copied, not assigned: the module's own dtypes and flags stay
    discriminator = None
    if stage == "synthesis" and payload.get("discriminator"):
        from ugpnet.model import build_discriminator

        discriminator = build_discriminator(model.preset)
        discriminator.load_state_dict(load_safetensors(payload["discriminator"]))
    trainer = StageTrainer(model, stage, hyperparams, perceptual=PerceptualWeights(**config["perceptual"]),
                           discriminator=discriminator, wrap=ddp_wrapper(world), device=device,
                           seed=hyperparams.seed)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            restore_training_checkpoint(Path(directory), trainer)
    logger = RankZeroLogger(config["tracking_uri"], config["mlflow_run_id"], rank == 0)
    val_lq, val_gt = config["validation"]
    shard = ray.train.get_dataset_shard("train")

    clock = ThroughputClock(hp.batch_size * world)
    while trainer.step < hp.steps:
        for batch in shard.iter_torch_batches(batch_size=hp.batch_size, drop_last=True,
                                                prefetch_batches=PREFETCH_BATCHES):
            clock.fetched()
            terms = trainer.train_step(batch["lq"], batch["gt"])
            clock.tick()
            step = trainer.step
            if step % config["log_interval"] == 0 or step == hp.steps:
                logger.metrics(terms, step, prefix="train/")
            metrics = {"step": step, "samples_per_s": clock.samples_per_s,
                       "data_wait_fraction": clock.data_wait_fraction} | clock.cpu_fractions()
            if step % hp.validation_interval == 0 or step == hp.steps:
                metrics |= validate(trainer, val_lq, val_gt, logger, step) if rank == 0 else {}
            if step % hp.checkpoint_interval == 0 or step == hp.steps:
                report_checkpoint(trainer, metrics, rank)
            if step >= hp.steps:
                break
            clock.asking()


def validate(trainer: StageTrainer, lq: torch.Tensor, gt: torch.Tensor, logger: RankZeroLogger, step: int):
    totals: dict[str, float] = {}
    count = 0.0
    for start in range(0, len(lq), 4):
        values = trainer.validate(lq[start:start + 4], gt[start:start + 4])
        n = values.pop("count")
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value * n
        count += n
    metrics = {f"val/{k}": v / count for k, v in totals.items()}
    logger.metrics(metrics, step)
    with torch.no_grad():
        trainer.model.eval()
        outputs = trainer.model(lq[:4].to(trainer.device), return_all=True)
        trainer.trained_module.train()
    logger.grid(lq[:4], [o.cpu() for o in outputs], gt[:4], step)
    return metrics


def report_checkpoint(trainer: StageTrainer, metrics: dict, rank: int) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (the weights are identical on all ranks)."""
    import ray.train

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            save_training_checkpoint(Path(directory), trainer)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)
