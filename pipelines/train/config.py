"""The training run's configuration: one typed object, built from the CLI, a config file and
`--set key=value` overrides, validated before any work (errors name the field)."""

import weakref
from dataclasses import asdict, dataclass, fields
from typing import Any

from pipelines.common import shared_options as common_options
from pipelines.common.config_fields import ConfigError
from pipelines.common.options import check_declared, load_config_file, option, parse_value
from ugpnet.degradations import NAMED_DEGRADATIONS, Degradation
from ugpnet.images import PHOTO_EXTENSIONS
from ugpnet.presets import PRESETS, get_preset
from ugpnet.stages import STAGES
from ugpnet.tasks import TASKS, TRAINING_DEGRADATIONS
from ugpnet.training.hyperparams import StageHyperparams, TrainHyperparams, check_hyperparams, default_hyperparams

IMAGE_EXTENSIONS = PHOTO_EXTENSIONS  # what training reads from `data` (no GIF: see ugpnet.images)


@dataclass(frozen=True)
class TrainConfig:
    """One training run, each field declared once (pipelines.common.options); validated by `validate` below."""

    preset: str = option(help="a model preset (`ugpnet presets` lists them)")
    data: str = option(help="folder or s3:// prefix of clean images")
    run_name: str = option(help="names the MLflow parent run and the storage folder; re-running it resumes")
    storage: str = option("runs", help="folder or s3:// prefix for checkpoints and bundles")
    task: str | None = option(None, choices=TASKS, default_text="the preset's task", help="the task trained for")
    degradation: str | None = option(None, default_text="the task's",
                                     help=f"named degradation, one of {', '.join(NAMED_DEGRADATIONS)}")
    workers: int = option(1, minimum=1, unit="workers", help="Ray Train workers (DDP: gloo on CPU, NCCL on GPU)")
    use_gpu: bool = option(False, flag="--gpu", help="one GPU per worker")
    cpus_per_worker: float | None = option(None, minimum=0, exclusive=True, unit="CPUs",
                                           default_text="fit the workers into the cluster, leaving room for data",
                                           help="Ray CPUs per training worker")
    stages: tuple[str, ...] = option(STAGES, help="the stages to run, in order, comma-separated")
    init_bundle: str | None = option(None, help="start from this bundle instead of fresh weights")
    register: str | None = option(None, default_text="ugpnet-<task>", help="registered model name")
    register_model: bool = option(True, flag="--no-register", help="log, register and alias the final bundle; "
                                                                   "--no-register skips it")
    tracking_uri: str | None = common_options.tracking_uri()
    experiment: str = common_options.experiment("ugpnet-train")
    val_fraction: float = option(0.1, minimum=0, exclusive=True, maximum=1, unit="fraction",
                                 help="share of images held out (fixed by path hash)")
    val_max_images: int = option(16, minimum=1, unit="crops",
                                 help="validation crops evaluated (≤ 5 per held-out image)")
    log_interval: int = option(10, minimum=1, unit="iterations", help="iterations between loss logs")
    max_failures: int = option(2, minimum=0, unit="restarts", help="worker-group restarts per stage (FailureConfig)")
    hyperparams: TrainHyperparams = option(None, cli=False, default_text="the preset's",
                                           help="per-stage settings (hyperparams.STAGE.KEY), e.g. --set "
                                                "hyperparams.fusion.lr=5e-4")

    def __post_init__(self):
        if self.hyperparams is None and self.preset in PRESETS:
            object.__setattr__(self, "hyperparams", default_hyperparams(self.preset))

    @property
    def resolved_task(self) -> str:
        return self.task or get_preset(self.preset).task

    @property
    def registered_name(self) -> str:
        return self.register or f"ugpnet-{self.resolved_task}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = list(self.stages)
        return data


@dataclass(frozen=True)
class RunPlan:
    """A config and what `train.run` derives from it beyond plain fields, gathered once in one place
    (`plan_run`): the run and its stages read this instead of going back to the config's modules at
    every stage (issue 12)."""
    config: TrainConfig
    task: str                                     # the resolved task (config.resolved_task)
    degradation: Degradation                      # makes the training and validation pairs
    registered_name: str                          # what the final bundle is registered as
    params: dict[str, Any]                        # config.to_dict(): the parent MLflow run's params
    hyperparams: dict[str, Any]                   # config.hyperparams.to_dict(): what the workers rebuild theirs from
    stages: dict[str, StageHyperparams]           # the stages to run, in STAGES order, with their settings


def plan_run(config: TrainConfig) -> RunPlan:
    """The run's plan from a config (which this does not validate: see `validate`)."""
    return RunPlan(config, config.resolved_task, degradation_for(config), config.registered_name, config.to_dict(),
                   config.hyperparams.to_dict(),
                   {stage: config.hyperparams.stage(stage) for stage in STAGES if stage in config.stages})


def check_types(config: TrainConfig) -> None:
    """`workers: "2"`, `use_gpu: "yes"`, `val_fraction: null` and the like: refused, naming the field,
    as the fields' declarations say (pipelines.common.options), in this verb's `field: reason` wording."""
    try:
        check_declared(config)
    except ConfigError as err:
        raise ValueError(f"{err.field}: {err.reason}") from None
    if not isinstance(config.stages, tuple) or not all(isinstance(stage, str) for stage in config.stages):
        raise ValueError(f"stages: must be a list of stage names, got {config.stages!r}")
    if not isinstance(config.hyperparams, TrainHyperparams):
        raise ValueError(f"hyperparams: must be a mapping of per-stage settings, got {config.hyperparams!r}")


# The configs `validate` has passed, by identity: build_config validates (so that --dry-run reports
# errors) and train.run validates what it is given, which was validated twice when it came from build_config.
_VALIDATED: "weakref.WeakValueDictionary[int, TrainConfig]" = weakref.WeakValueDictionary()


def validate(config: TrainConfig) -> None:
    """Fail before any work, naming the field. A config this has passed once is not checked again."""
    if _VALIDATED.get(id(config)) is config:
        return
    check_types(config)
    if config.preset not in PRESETS:
        raise ValueError(f"preset: unknown preset {config.preset!r}; known: {', '.join(PRESETS)}")
    if config.degradation is not None and config.degradation not in NAMED_DEGRADATIONS:
        raise ValueError(f"degradation: unknown {config.degradation!r}; known: {', '.join(NAMED_DEGRADATIONS)}")
    if not config.run_name or "/" in config.run_name or config.run_name.startswith("."):
        raise ValueError(f"run_name: must be a plain name, got {config.run_name!r}")
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown or not config.stages:
        raise ValueError(f"stages: must be a non-empty subset of {', '.join(STAGES)}, got {list(config.stages)}")
    if config.val_fraction >= 1:
        raise ValueError(f"val_fraction: must be in (0, 1), got {config.val_fraction}")
    if not config.experiment.strip():
        raise ValueError("experiment: must be a non-empty name")
    check_hyperparams(config.hyperparams, config.preset, tuple(config.stages))
    check_storage_location(config.storage)
    check_data_location(config.data)
    if config.init_bundle:
        check_bundle_location(config.init_bundle)
    _VALIDATED[id(config)] = config


def check_bundle_location(uri: str) -> None:
    """`init_bundle` must be a usable path or s3:// URI (credentials in it are refused: they would
    otherwise travel into params and logs before the bundle is first opened)."""
    from pipelines.common import storage

    try:
        storage.resolve(uri)
    except storage.StorageError as err:
        raise ValueError(f"init_bundle: {err}") from err


def check_storage_location(uri: str) -> None:
    """A folder or s3:// prefix (`gs://x` fails now, not after the first stage has trained)."""
    from pipelines.common import storage

    try:
        storage.resolve(uri)
    except storage.StorageError as err:
        raise ValueError(f"storage: {err}") from None


def check_data_location(uri: str) -> None:
    """The data folder (or an S3 prefix with something below it) must exist: one cheap call."""
    from pyarrow import fs as pafs

    from pipelines.common import storage

    try:
        location = storage.resolve(uri)
    except storage.StorageError as err:
        raise ValueError(f"data: {err}") from None
    if location.spec.scheme == "local":
        exists = storage.file_info(location).type == pafs.FileType.Directory
    else:  # an S3 prefix is not an object: it exists when something is listed below it
        selector = pafs.FileSelector(location.path, allow_not_found=True)
        exists = bool(location.filesystem.get_file_info(selector))
    if not exists:
        raise ValueError(f"data: {uri} is not an existing folder or s3:// prefix with images")


def degradation_for(config: TrainConfig):
    return NAMED_DEGRADATIONS[config.degradation] if config.degradation else \
        TRAINING_DEGRADATIONS[config.resolved_task]


def apply_override(data: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set `a.b.c` in nested dicts; unknown keys are an error naming the key."""
    node, parts = data, dotted_key.split(".")
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ValueError(f"--set {dotted_key}: {'.'.join(parts[:i + 1])} is not a section of the config")
        node = node[part]
    if parts[-1] not in node:
        raise ValueError(f"--set {dotted_key}: unknown key {parts[-1]!r} (known: {', '.join(sorted(node))})")
    node[parts[-1]] = value


def merge_overrides(target: dict[str, Any], updates: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested dict of overrides leaf by leaf, so unknown keys are named like `--set` ones."""
    for key, value in updates.items():
        if isinstance(value, dict):
            merge_overrides(target, value, f"{prefix}{key}.")
        else:
            apply_override(target, f"{prefix}{key}", value)


def build_config(values: dict[str, Any], overrides: list[str] = (), config_file: str | None = None) -> TrainConfig:
    """Defaults ← config file ← explicit CLI values ← `--set` overrides; then validation."""
    data: dict[str, Any] = {}
    if config_file:
        data.update(load_config_file(config_file))
    data.update({k: v for k, v in values.items() if v is not None})
    for name in ("preset", "data", "run_name"):
        if not data.get(name):
            raise ValueError(f"{name}: required (give --{name.replace('_', '-')} or set it in --config)")
        if not isinstance(data[name], str):
            raise ValueError(f"{name}: must be a string, got {data[name]!r}")
    if data["preset"] not in PRESETS:
        raise ValueError(f"preset: unknown preset {data['preset']!r}; known: {', '.join(PRESETS)}")
    hyper = default_hyperparams(data["preset"]).to_dict()
    merge_overrides({"hyperparams": hyper}, {"hyperparams": data.pop("hyperparams", None) or {}})
    steps = data.pop("steps", None)
    if steps is not None:
        stage_names = data.get("stages") or STAGES
        steps = [_count("steps", s) for s in (steps.split(",") if isinstance(steps, str) else _listed("steps", steps))]
        if len(steps) != len(stage_names):
            raise ValueError(f"steps: give one count per stage ({', '.join(stage_names)}), got {steps}")
        for stage, count in zip(stage_names, steps, strict=True):
            hyper[stage]["steps"] = count
    batch_size = data.pop("batch_size", None)
    if batch_size is not None:
        for stage in STAGES:
            hyper[stage]["batch_size"] = _count("batch_size", batch_size)
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
    merged = {**data, "hyperparams": hyper}
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ValueError(f"--set {override!r}: expected KEY=VALUE")
        key = key.strip().replace("-", "_")
        if key in known:  # any field, given elsewhere or not: --set workers=2
            merged[key] = parse_value(value)
        else:
            apply_override(merged, key, parse_value(value))
    try:
        merged["hyperparams"] = TrainHyperparams.from_dict(merged["hyperparams"])
    except (TypeError, AttributeError, KeyError) as err:
        raise ValueError(f"hyperparams: {err}") from None
    if "stages" in merged:
        stages = merged["stages"]
        merged["stages"] = tuple(stages.split(",") if isinstance(stages, str) else _listed("stages", stages))
    config = TrainConfig(**merged)
    validate(config)
    return config


def _listed(name: str, value) -> list:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name}: must be a list or comma-separated values, got {value!r}")
    return list(value)


def _count(name: str, value) -> int:
    """An integer given as a number or digits (`1.5`, `true`, `"x"` are refused)."""
    if isinstance(value, bool) or not (isinstance(value, int) or isinstance(value, str) and value.strip().isascii()
                                       and value.strip().isdigit()):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    return int(value)
