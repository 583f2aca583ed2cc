"""The Ray cluster a run uses: attach to it (or start a local one), and refuse, naming the field,
actor pools it can never place (Ray Data would wait for them forever).
"""

import os

from pipelines.common import logs
from pipelines.common.config_fields import ConfigError

# Memory reserved per model actor: the interpreter, torch and activations, plus copies of the weights
# (the payload bytes, the loaded state dict, the module). A reservation, not a limit.
# Measured: a CPU actor of a tiny preset peaks near 650 MiB (Python, torch, Ray, batches in flight).
ACTOR_BASE_MEMORY = 1 << 30
ACTOR_WEIGHT_COPIES = 3


# Ray's raylet reads its settings from RAY_<name> variables when it starts.
WORKER_SOFT_LIMIT_VARIABLE = "RAY_num_workers_soft_limit"


def worker_soft_limit(cpus: int) -> int:
    """Idle worker processes a local raylet keeps. Ray's default is one per CPU, and it kills an idle
    worker above that after a second; Ray Data's helper actors (about 4) and the model actors take
    those places, so read/decode and encode/write tasks can start fresh Pythons that import torch
    again: 47 task workers in a 2,000-photo run on 2 CPUs, 162 ms of task-worker CPU per photo where
    the work is about 35 (bench/restore_throughput.py; shorter runs did not churn, with or without
    this limit: docs/execution.md). Two per CPU and the helpers: what a pipeline of fractional-CPU
    tasks and actors keeps busy at once."""
    return 2 * max(1, cpus) + 4


def keep_idle_workers_for_a_local_cluster() -> None:
    """Before a local Ray starts: its raylet keeps worker_soft_limit idle workers, unless the
    environment already says how many."""
    os.environ.setdefault(WORKER_SOFT_LIMIT_VARIABLE, str(worker_soft_limit(os.cpu_count() or 1)))


def ensure_ray() -> bool:
    """Connect to the cluster in RAY_ADDRESS (as in `ray job submit`), else start a local one.
    Returns whether this call started Ray (and so should shut it down). A cluster started with
    `ray start` takes its own settings: set RAY_num_workers_soft_limit there (docs/execution.md)."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        logs.init_ray()
    else:
        keep_idle_workers_for_a_local_cluster()
        logs.init_ray(include_dashboard=False)
    return True


def coarse_actor_memory(model) -> int:
    """Ray memory reserved per model actor where no per-image plan exists (evaluate's small crops):
    the base plus the weight copies. Restore plans each image (pipelines.restore.memory.actor_memory)."""
    return ACTOR_BASE_MEMORY + ACTOR_WEIGHT_COPIES * model.weights_bytes


def check_resources(config, actor_memory: int) -> None:
    """Pools that can never be placed make Ray Data wait forever; say so instead, naming the field."""
    import ray

    resources = ray.cluster_resources()
    actors = sum(config.pool_sizes.values())
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    growable = bool(os.environ.get("RAY_ADDRESS"))  # an existing cluster may autoscale; a local one cannot
    if config.gpus_per_actor > 0 and actors * config.gpus_per_actor > gpus and not growable:
        raise ConfigError("gpus_per_actor", f"{actors} actor(s) x {config.gpus_per_actor} GPU exceed the "
                                            f"{gpus:g} GPU(s) of this Ray cluster")
    needed = actors * config.cpus_per_actor + config.cpus_per_task
    if needed > cpus + 1e-9 and not growable:
        raise ConfigError("actors", f"{actors} actor(s) x {config.cpus_per_actor} CPU plus one "
                                    f"{config.cpus_per_task}-CPU task need {needed:g} CPUs; this Ray cluster has "
                                    f"{cpus:g} (lower actors or cpus_per_actor)")
    memory = resources.get("memory", float("inf"))
    if actors * actor_memory > memory and not growable:
        raise ConfigError("actors", f"{actors} actor(s) x {actor_memory / 2**30:.1f} GiB exceed the "
                                    f"{memory / 2**30:.1f} GiB of memory this Ray cluster can reserve")
