"""The training run's configuration: one typed object, built from the CLI, a config file and
`--set key=value` overrides, validated before any work (errors name the field)."""

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ugpnet.degradations import NAMED_DEGRADATIONS
from ugpnet.images import PHOTO_EXTENSIONS
from ugpnet.presets import PRESETS, get_preset
from ugpnet.stages import STAGES
from ugpnet.tasks import TASKS, TRAINING_DEGRADATIONS
from ugpnet.training.hyperparams import TrainHyperparams, check_hyperparams, default_hyperparams

IMAGE_EXTENSIONS = PHOTO_EXTENSIONS  # what training reads from `data` (no GIF: see ugpnet.images)


@dataclass(frozen=True)
class TrainConfig:
    preset: str                                   # a key of ugpnet.PRESETS
    data: str                                     # folder or s3:// prefix of clean images
    run_name: str                                 # names the MLflow parent run and the storage folder
    storage: str = "runs"                         # folder or s3:// prefix for checkpoints and bundles
    task: str | None = None                       # a name in ugpnet.tasks.TASKS; default: the preset's task
    degradation: str | None = None                # a named degradation; default: the task's training one
    workers: int = 1                              # Ray Train workers (DDP: gloo on CPU, NCCL on GPU)
    use_gpu: bool = False
    cpus_per_worker: float | None = None          # None: fit the workers into the cluster, leave room for data
    stages: tuple[str, ...] = STAGES              # the stages to run, in order
    init_bundle: str | None = None                # start from this bundle instead of fresh weights
    register: str | None = None                   # registered model name; default ugpnet-<task>
    register_model: bool = True                   # log, register and alias the final bundle
    tracking_uri: str | None = None               # default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "ugpnet-train"
    val_fraction: float = 0.1                     # share of images held out (fixed by path hash)
    val_max_images: int = 16                      # validation crops evaluated (≤ 5 per held-out image)
    log_interval: int = 10                        # iterations between loss logs
    max_failures: int = 2                         # worker-group restarts per stage (FailureConfig)
    hyperparams: TrainHyperparams = field(default=None)  # per-stage settings; default from the preset

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


# The type of every plain field; a value of any other type fails validation, naming the field.
_FIELD_TYPES = {
    "preset": (str,), "data": (str,), "run_name": (str,), "storage": (str,), "task": (str, None),
    "degradation": (str, None), "workers": (int,), "use_gpu": (bool,), "cpus_per_worker": (int, float, None),
    "init_bundle": (str, None), "register": (str, None), "register_model": (bool,), "tracking_uri": (str, None),
    "experiment": (str,), "val_fraction": (int, float), "val_max_images": (int,), "log_interval": (int,),
    "max_failures": (int,),
}


def check_types(config: TrainConfig) -> None:
    """`workers: "2"`, `use_gpu: "yes"`, `val_fraction: null` and the like: refused, naming the field."""
    for name, kinds in _FIELD_TYPES.items():
        value = getattr(config, name)
        if value is None and None in kinds:
            continue
        types = tuple(kind for kind in kinds if kind is not None)
        is_bool = isinstance(value, bool)
        if not isinstance(value, types) or (is_bool and bool not in types) or (not is_bool and types == (bool,)):
            wanted = " or ".join("null" if k is None else k.__name__ for k in kinds)
            raise ValueError(f"{name}: must be {wanted}, got {value!r}")
    if not isinstance(config.stages, tuple) or not all(isinstance(stage, str) for stage in config.stages):
        raise ValueError(f"stages: must be a list of stage names, got {config.stages!r}")
    if not isinstance(config.hyperparams, TrainHyperparams):
        raise ValueError(f"hyperparams: must be a mapping of per-stage settings, got {config.hyperparams!r}")


def validate(config: TrainConfig) -> None:
    """Fail before any work, naming the field."""
    check_types(config)
    if config.preset not in PRESETS:
        raise ValueError(f"preset: unknown preset {config.preset!r}; known: {', '.join(PRESETS)}")
    if config.task is not None and config.task not in TASKS:
        raise ValueError(f"task: must be one of {', '.join(TASKS)}, got {config.task!r}")
    if config.degradation is not None and config.degradation not in NAMED_DEGRADATIONS:
        raise ValueError(f"degradation: unknown {config.degradation!r}; known: {', '.join(NAMED_DEGRADATIONS)}")
    if not config.run_name or "/" in config.run_name or config.run_name.startswith("."):
        raise ValueError(f"run_name: must be a plain name, got {config.run_name!r}")
    if config.workers < 1:
        raise ValueError(f"workers: must be >= 1, got {config.workers}")
    if config.cpus_per_worker is not None and config.cpus_per_worker <= 0:
        raise ValueError(f"cpus_per_worker: must be > 0, got {config.cpus_per_worker}")
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown or not config.stages:
        raise ValueError(f"stages: must be a non-empty subset of {', '.join(STAGES)}, got {list(config.stages)}")
    if not 0 < config.val_fraction < 1:
        raise ValueError(f"val_fraction: must be in (0, 1), got {config.val_fraction}")
    if config.val_max_images < 1 or config.log_interval < 1 or config.max_failures < 0:
        raise ValueError("val_max_images and log_interval must be >= 1, max_failures >= 0")
    if not config.experiment.strip():
        raise ValueError("experiment: must be a non-empty name")
    check_hyperparams(config.hyperparams, config.preset, tuple(config.stages))
    check_storage_location(config.storage)
    check_data_location(config.data)
    if config.init_bundle:
        check_bundle_location(config.init_bundle)


def check_bundle_location(uri: str) -> None:
    """`init_bundle` must be a usable path or s3:// URI (credentials in it are refused: they would
    otherwise travel into params and logs before the bundle is first opened)."""
    from pipelines import storage

    try:
        storage.resolve(uri)
    except storage.StorageError as err:
        raise ValueError(f"init_bundle: {err}") from err


def check_storage_location(uri: str) -> None:
    """A folder or s3:// prefix (`gs://x` fails now, not after the first stage has trained)."""
    from pipelines import storage

    try:
        storage.resolve(uri)
    except storage.StorageError as err:
        raise ValueError(f"storage: {err}") from None


def check_data_location(uri: str) -> None:
    """The data folder (or an S3 prefix with something below it) must exist: one cheap call."""
    from pyarrow import fs as pafs

    from pipelines import storage

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


def parse_value(text: str) -> Any:
    """`--set` values are JSON when they parse as JSON (numbers, lists, true), else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


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
        data.update(read_config_file(config_file))
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
        apply_override(merged, key.strip(), parse_value(value))
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


def read_config_file(path: str) -> dict[str, Any]:
    import yaml

    text = Path(path).read_text()
    try:
        data = (yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)) or {}
    except (yaml.YAMLError, ValueError) as err:
        raise ValueError(f"config: {path} cannot be parsed: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config: {path} must hold a mapping of field names to values")
    return data
