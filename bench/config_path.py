"""The path a training run's config takes through the code (issue 12: "following a training run's
config from train.run visits each module at most twice").

Runs the driver side of `ugpnet train` for real: `build_config` as `train.run_cli` calls it, then what
`train.run` does with the config before it hands each stage to Ray Train (`trainer.fit`, the boundary:
neither Ray nor the workers run here, so `build_catalogue`, `ray.put` and the TorchTrainer are left out,
and they receive no config object). MLflow runs on a throwaway SQLite file, storage is a temp folder.
`driver_side` follows `run`, `run_stage` and `_fit_stage` call by call without being them, so those
three (all in pipelines/train/run.py) are not stops here: counting them adds one visit of train.py (`run`
itself, before validation). The workers' side (train_loop.train_stage_loop) is not traced.

Under `sys.setprofile` it records every call of a function in ugpnet/ or pipelines/ that receives, as
an argument (`self` included, or inside a list, tuple or dict argument), a TrainConfig, an object that
config holds (its TrainHyperparams, their per-stage StageHyperparams, the PerceptualWeights paths; by
identity, so the preset's default hyperparameters that build_config starts from do not count), or a
plan derived from it (pipelines.train.config.RunPlan, where that exists). It prints the (file,
function) sequence and the figures, for the whole path and from `train.run` on: stops, files, returns
to a file already left, and the most visits of one file (a visit: consecutive stops in one file).

    python bench/config_path.py [--preset tiny_denoise] [--quiet]
"""

import argparse
import sys
import tempfile
from collections import Counter
from dataclasses import fields, is_dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRACED_ROOTS = tuple(str(REPO / package) + "/" for package in ("ugpnet", "pipelines"))


def config_types() -> tuple[type, ...]:
    """TrainConfig, and the plan derived from it where the code has one."""
    from pipelines.train import config as train_config

    return tuple(getattr(train_config, name) for name in ("TrainConfig", "RunPlan") if hasattr(train_config, name))


def held_objects(value, found: set[int]) -> None:
    """The ids of `value` and every dataclass, tuple or dict value below it."""
    if id(value) in found or not (is_dataclass(value) or isinstance(value, tuple | list | dict)):
        return
    found.add(id(value))
    children = [getattr(value, f.name) for f in fields(value)] if is_dataclass(value) else \
        list(value.values()) if isinstance(value, dict) else list(value)
    for child in children:
        held_objects(child, found)


class ConfigObjects:
    """Tells whether a value is, or directly contains, the config, a plan or something the config holds."""

    def __init__(self):
        self.types, self.held = config_types(), set()

    def carried(self, value) -> bool:
        items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list | tuple) else []
        return any(self.carried_one(item) for item in [value, *items])

    def carried_one(self, value) -> bool:
        if isinstance(value, self.types):
            held_objects(value, self.held)  # a config (or plan) seen for the first time: what it holds
            return True
        return id(value) in self.held and is_dataclass(value)


def arguments(frame) -> list:
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)
    return [frame.f_locals.get(name) for name in code.co_varnames[:count]]


def traced_stops(function, *args) -> tuple[list[tuple[str, str]], object]:
    """(file, function) of each call in ugpnet/ or pipelines/ that receives a config-carrying object,
    in order, while `function(*args)` runs; and its result."""
    objects, stops, seen_files = ConfigObjects(), [], {}

    def profile(frame, event, _arg):
        if event != "call":
            return
        filename = frame.f_code.co_filename
        inside = seen_files.get(filename)
        if inside is None:
            inside = seen_files[filename] = filename.startswith(TRACED_ROOTS)
        if inside and any(objects.carried(value) for value in arguments(frame)):
            stops.append((str(Path(filename).relative_to(REPO)), frame.f_code.co_qualname))

    sys.setprofile(profile)
    try:
        result = function(*args)
    finally:
        sys.setprofile(None)
    return stops, result


def figures(stops: list[tuple[str, str]]) -> dict:
    visits = [file for i, (file, _) in enumerate(stops) if i == 0 or stops[i - 1][0] != file]
    per_file = Counter(visits)
    return {"stops": len(stops), "files": len(per_file), "returns": len(visits) - len(per_file),
            "max_visits": max(per_file.values(), default=0), "visits_per_file": dict(per_file.most_common())}


def driver_side(config) -> None:
    """What `train.run(config)` does with the config on the driver, in its order, up to `trainer.fit`."""
    import mlflow

    from pipelines.common import storage
    from pipelines.common.tracking import tracking_uri
    from pipelines.train import run as train
    from pipelines.train.config import plan_run, validate

    validate(config)
    plan = plan_run(config)
    train.check_reachable(config)
    uri = tracking_uri(config.tracking_uri)
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.set_experiment(config.experiment).experiment_id
    bundles = storage.resolve(config.storage).child(config.run_name).child("bundles")
    with train.start_parent_run(plan, experiment_id, 0) as parent_run:
        start = train.ensure_initial_bundle(plan, bundles)
        for _stage, hp in plan.stages.items():
            _ = hp.batch_size * config.workers * train.STEPS_PER_EPOCH   # train_dataset's samples_per_epoch
            # run_stage → _fit_stage, up to TorchTrainer(...).fit()
            train.start_stage_run(plan, _stage, experiment_id, parent_run.info.run_id)
            with train.fetched_bundle(start):
                train.worker_cpus(plan.config)
                train.ray_storage(plan.config)


def tiny_config(preset: str, folder: Path):
    """The config `ugpnet train --preset <preset> --data … --steps 2,2,2 --batch-size 1` builds."""
    from pipelines.data.samples import write_sample_photos
    from pipelines.train.config import build_config

    data = folder / "photos"
    write_sample_photos(data, with_skimage=False)
    values = {"preset": preset, "data": str(data), "run_name": "config-path", "storage": str(folder / "runs"),
              "steps": "2,2,2", "batch_size": 1, "cpus_per_worker": 1.0, "register_model": False,
              "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"}
    return traced_stops(build_config, values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny_denoise")
    parser.add_argument("--quiet", action="store_true", help="print the figures only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ugpnet-config-path-") as folder:
        built, config = tiny_config(args.preset, Path(folder))
        run, _ = traced_stops(driver_side, config)
    if not args.quiet:
        for i, (file, function) in enumerate(built + run, 1):
            print(f"{i:3d}  {file}  {function}{'   (train.run starts)' if i == len(built) + 1 else ''}")
    for title, stops in (("build_config + train.run", built + run), ("from train.run", run)):
        result = figures(stops)
        print(f"{title}: stops {result['stops']}, files {result['files']}, returns to a file already left "
              f"{result['returns']}, most visits of one file {result['max_visits']}")
        print("  visits per file: " + ", ".join(f"{file} {n}" for file, n in result["visits_per_file"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
