"""`ugpnet train`: the three UGPNet stages on Ray Train, tracked in MLflow, registered at the end.

One TorchTrainer run per stage, in order; each stage's final weights are written as a bundle under
`<storage>/<run_name>/bundles/<stage>/` and feed the next stage. Re-running the same run name
resumes: stages with a bundle are skipped, the current stage continues from its last Ray Train
checkpoint (same RunConfig name and storage), and its MLflow run continues with the same step
numbers. MLflow: one parent run (tag `ugpnet.run_name`), one nested run per stage.
"""

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.common import logs, options, storage
from pipelines.common.bundle_store import bundle_exists, fetched_bundle, upload_directory
from pipelines.common.models import bundle_payload
from pipelines.common.options import option
from pipelines.common.redaction import redact, redact_values
from pipelines.common.tracking import tracking_uri
from pipelines.train.config import RunPlan, TrainConfig, build_config, plan_run, validate
from ugpnet.checkpoint import DISCRIMINATOR_FILE, DISCRIMINATOR_STEM
from ugpnet.stages import STAGES

RUN_TAG, STAGE_TAG = "ugpnet.run_name", "ugpnet.stage"
STEPS_PER_EPOCH = 100  # iterations per pass over the data stream (crops are drawn afresh every pass)


@dataclass
class TrainResult:
    run_name: str
    final_bundle: str
    stages_run: list[str] = field(default_factory=list)
    stages_skipped: list[str] = field(default_factory=list)
    skipped_images: int = 0
    validation: dict[str, float] = field(default_factory=dict)
    stage_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # last report of each stage run
    registered_version: str | None = None


def run(config: TrainConfig) -> TrainResult:
    import mlflow
    import ray

    validate(config)  # not again for a config from build_config
    plan = plan_run(config)
    logs.bind(run_id=config.run_name)
    if not ray.is_initialized():
        logs.init_ray()  # local by default; joins the cluster when RAY_ADDRESS is set (ray job submit)
    check_reachable(config)
    from pipelines.train.data import build_catalogue, data_task_limit, train_dataset, validation_pairs

    preset_name = config.preset
    catalogue = build_catalogue(config.data, config.val_fraction)
    print(f"ugpnet train: {len(catalogue.train)} training and {len(catalogue.validation)} validation images; "
          f"skipped {len(catalogue.skipped)} that could not be decoded", flush=True)
    for uri, reason in catalogue.skipped[:20]:
        print(f"  skipped {uri}: {reason}", flush=True)

    uri = tracking_uri(config.tracking_uri)
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.set_experiment(config.experiment).experiment_id
    run_root = storage.resolve(config.storage).child(config.run_name)
    bundles = run_root.child("bundles")
    result = TrainResult(config.run_name, final_bundle="", skipped_images=len(catalogue.skipped))

    with start_parent_run(plan, experiment_id, len(catalogue.skipped)) as parent_run:
        start = ensure_initial_bundle(plan, bundles)
        from ugpnet.presets import get_preset

        preset = get_preset(preset_name)
        validation = validation_pairs(catalogue.validation, preset.resolution, plan.degradation,
                                      config.val_max_images)
        for stage, hp in plan.stages.items():
            done = bundles.child(stage)
            if bundle_exists(done):
                print(f"ugpnet train: stage {stage} already finished, skipping", flush=True)
                result.stages_skipped.append(stage)
                start = done.uri
                continue
            max_tasks = data_task_limit(ray.cluster_resources().get("CPU", 1), config.workers * worker_cpus(config))
            dataset = train_dataset(catalogue.train, preset.resolution, plan.degradation,
                                    samples_per_epoch=hp.batch_size * config.workers * STEPS_PER_EPOCH,
                                    max_tasks=max_tasks)
            metrics = run_stage(plan, stage, start, done, dataset, validation, experiment_id,
                                parent_run.info.run_id, uri)
            result.stage_metrics[stage] = metrics
            result.validation = {k: v for k, v in metrics.items() if k.startswith("val/")}
            result.stages_run.append(stage)
            start = done.uri
        result.final_bundle = start
        if result.validation:
            mlflow.log_metrics({k.replace("/", "_"): v for k, v in result.validation.items()})
        if config.register_model:
            from pipelines.registry.store import log_bundle

            with fetched_bundle(start) as final:
                version = log_bundle(final, register_as=plan.registered_name, alias="candidate")
            result.registered_version = version.version
            print(f"ugpnet train: registered {plan.registered_name} version {version.version} "
                  f"(alias candidate)", flush=True)
    return result


def run_stage(plan: RunPlan, stage: str, start: str, done: storage.Location, dataset, validation,
              experiment_id: str, parent_id: str, uri: str) -> dict[str, float]:
    import mlflow

    from pipelines.train.loop import MODEL_FILE, TRAINER_FILE

    stage_run = start_stage_run(plan, stage, experiment_id, parent_id)
    with fetched_bundle(start) as start_bundle:  # once per stage; a download is removed at the end
        fit = _fit_stage(plan, stage, start_bundle, start, dataset, validation, uri, stage_run)
        with fit.checkpoint.as_directory() as directory:
            write_stage_bundle(Path(directory) / MODEL_FILE, Path(directory) / TRAINER_FILE, start_bundle, done,
                               stage)
    mlflow.MlflowClient().set_terminated(stage_run)
    return {k: float(v) for k, v in (fit.metrics or {}).items() if isinstance(v, int | float)}


def _fit_stage(plan: RunPlan, stage: str, start_bundle: Path, start: str, dataset, validation, uri: str,
               stage_run: str):
    """One stage on Ray Train from the start bundle in `start_bundle`; the result, with a checkpoint."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipelines.train.loop import train_stage_loop

    config = plan.config
    cpus = worker_cpus(config)
    # The start weights travel through the object store: a path would name a directory on the driver's
    # disk, which training workers on other nodes cannot see.
    start_ref = ray.put(bundle_payload(start_bundle, source=start, with_discriminator=stage == "synthesis"))
    loop_config = {
        "stage": stage, "start_payload": start_ref, "hyperparams": plan.hyperparams,
        "perceptual": asdict(config.hyperparams.perceptual), "tracking_uri": uri, "mlflow_run_id": stage_run,
        "validation": validation, "log_interval": config.log_interval, "threads": max(1, int(cpus)),
    }
    trainer = TorchTrainer(
        train_stage_loop, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu,
                                               resources_per_worker={"CPU": cpus}),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=f"{config.run_name}-{stage}", **ray_storage(config),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets={"train": dataset})
    fit = trainer.fit()
    if fit.checkpoint is None:
        raise RuntimeError(f"stage {stage} finished without a checkpoint")
    return fit


def start_parent_run(plan: RunPlan, experiment_id: str, skipped_images: int):
    """The run's MLflow parent run (an ActiveRun), continued on a resume; a new one gets the config as params."""
    import mlflow

    run_name = plan.config.run_name
    parent = find_run(experiment_id, {RUN_TAG: run_name}, parent_id=None)
    active = mlflow.start_run(run_id=parent, run_name=None if parent else run_name, tags={RUN_TAG: run_name})
    if parent is None:
        mlflow.log_params(flatten(config_params(plan)))
        mlflow.log_metric("data/skipped_images", skipped_images)
    return active


def start_stage_run(plan: RunPlan, stage: str, experiment_id: str, parent_id: str) -> str:
    """The stage's nested run id, continued on a resume; a new one gets the stage's hyperparameters."""
    import mlflow

    run_name = plan.config.run_name
    stage_run = find_run(experiment_id, {RUN_TAG: run_name, STAGE_TAG: stage}, parent_id=parent_id)
    if stage_run is None:
        client = mlflow.MlflowClient()
        created = client.create_run(experiment_id, run_name=f"{run_name}/{stage}",
                                    tags={RUN_TAG: run_name, STAGE_TAG: stage, "mlflow.parentRunId": parent_id})
        stage_run = created.info.run_id
        hp = plan.stages[stage]
        client.log_batch(stage_run, params=[mlflow.entities.Param(k, str(v))
                                            for k, v in flatten({stage: asdict(hp)}).items()])
    return stage_run


def write_stage_bundle(weights: Path, trainer_state: Path, start_bundle: Path, done: storage.Location,
                       stage: str) -> None:
    """The stage's result as a bundle (plus the discriminator after stage 2), uploaded to storage;
    `start_bundle`: the local folder of the bundle the stage started from."""
    import torch
    from safetensors.torch import load_file, save_file

    import ugpnet
    from ugpnet.state_dicts import load_state_dict_strict

    model = ugpnet.load(start_bundle)
    load_state_dict_strict(model, load_file(str(weights)), str(weights))
    extra = {}
    state = torch.load(trainer_state, map_location="cpu", weights_only=True)
    if "discriminator" in state:
        extra[DISCRIMINATOR_STEM] = state["discriminator"]
    previous = getattr(model, "bundle_config", {}).get("provenance", {})
    with tempfile.TemporaryDirectory() as local:
        ugpnet.save(model, local, provenance={**previous, f"stage_{stage}": {"steps": int(state["step"])}},
                    extra_tensors=extra)
        if not extra and (start_bundle / DISCRIMINATOR_FILE).is_file():
            save_file(load_file(str(start_bundle / DISCRIMINATOR_FILE)), str(Path(local) / DISCRIMINATOR_FILE))
        upload_directory(Path(local), done)


def check_reachable(config: TrainConfig) -> None:
    """Local data, storage or perceptual weight files that other nodes of the cluster cannot see are
    refused before any work (nothing is probed on a single node)."""
    from pipelines.common.cluster_paths import check_local_paths, local_paths

    fields = {"data": config.data, "storage": config.storage, **asdict(config.hyperparams.perceptual)}
    check_local_paths(local_paths(fields, outputs=("storage",)))


def ensure_initial_bundle(plan: RunPlan, bundles: storage.Location) -> str:
    """The weights the first stage starts from: `init_bundle`, or fresh ones saved once per run."""
    config = plan.config
    if config.init_bundle:
        return config.init_bundle
    initial = bundles.child("initial")
    if not bundle_exists(initial):
        import ugpnet

        with tempfile.TemporaryDirectory() as local:
            ugpnet.save(ugpnet.build(config.preset, seed=config.hyperparams.seed), local,
                        task=plan.task, provenance={"source": "ugpnet train", "run": config.run_name})
            upload_directory(Path(local), initial)
    return initial.uri


def worker_cpus(config: TrainConfig) -> float:
    """CPUs per worker: as given, else share the cluster leaving one CPU for the data pipeline."""
    if config.cpus_per_worker:
        return config.cpus_per_worker
    import ray

    total = ray.cluster_resources().get("CPU", 1)
    return max(0.25, min(1.0, (total - 1) / config.workers)) if total > 1 else 0.5


def ray_storage(config: TrainConfig) -> dict:
    location = storage.resolve(config.storage)
    if location.spec.scheme == "local":
        return {"storage_path": location.path}
    return {"storage_path": location.path, "storage_filesystem": location.filesystem}


def find_run(experiment_id: str, tags: dict[str, str], parent_id: str | None) -> str | None:
    import mlflow

    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlflow.MlflowClient().search_runs([experiment_id], filter_string=query, max_results=50)
    for found in runs:
        is_child = "mlflow.parentRunId" in found.data.tags
        if (parent_id is None and not is_child and STAGE_TAG not in found.data.tags) or \
                (parent_id is not None and found.data.tags.get("mlflow.parentRunId") == parent_id):
            return found.info.run_id
    return None


def config_params(plan: RunPlan) -> dict:
    """The config as MLflow params: URIs are kept, their credentials are not (a tracking URI may be
    `https://user:token@host`)."""
    return redact_values(plan.params)


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            # Every MLflow param goes through here: redacted once more, whatever its source.
            flat[name] = redact(json.dumps(value) if isinstance(value, list | tuple) else str(value))
    return flat


@dataclass
class TrainShortcuts:
    """Flags that set parts of several TrainConfig fields at once (also accepted in a config file)."""

    steps: str | None = option(None, unit="iterations", default_text="the preset's",
                               help="iterations per stage, comma-separated, e.g. 2000,4000,2000")
    batch_size: int | None = option(None, minimum=1, unit="crops", default_text="the preset's",
                                    help="batch size of every stage")
    stage: str | None = option(None, choices=STAGES, default_text="all stages", help="run this stage alone")
    vgg16: str | None = option(None, help="torchvision VGG16 weights (LPIPS backbone)")
    lpips_heads: str | None = option(None, help="LPIPS v0.1 vgg linear heads")
    vgg19: str | None = option(None, help="torchvision VGG19 weights (contextual loss)")


def add_parsers(sub) -> None:
    parser = sub.add_parser("train", help="train the three stages on Ray Train, tracked in MLflow")
    options.add_options(parser, TrainConfig, common=False)
    options.add_options(parser, TrainShortcuts, common=False)
    options.add_common_flags(parser)
    parser.set_defaults(handler=run_cli)


def run_cli(args) -> int:
    values = options.flag_values(args, TrainConfig)
    shortcuts = options.flag_values(args, TrainShortcuts)
    if "stage" in shortcuts:
        if shortcuts["stage"] not in STAGES:
            raise ValueError(f"stage: must be one of {', '.join(STAGES)}, got {shortcuts['stage']!r}")
        values["stages"] = [shortcuts.pop("stage")]
    perceptual = {k: shortcuts.pop(k) for k in ("vgg16", "lpips_heads", "vgg19") if shortcuts.get(k)}
    if perceptual:
        values["hyperparams"] = {"perceptual": perceptual}
    values.update(shortcuts)
    config = build_config(values, args.overrides, args.config)
    if args.dry_run:
        print(json.dumps(redact_values(config.to_dict()), indent=2, default=str))
        return 0
    result = run(config)
    print(f"ugpnet train: done; stages run {result.stages_run or '-'}, skipped {result.stages_skipped or '-'}; "
          f"final bundle {redact(result.final_bundle)}; validation {json.dumps(result.validation)}")
    return 0
