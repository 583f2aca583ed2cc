"""`--model` references, resolved once on the driver to a local bundle and a concrete version.

Accepted references:
- a bundle directory (`model.safetensors` + `ugpnet.json`);
- `models:/NAME@ALIAS` or `models:/NAME/VERSION`: the MLflow registry (see pipelines.registry);
- `default` or `default:TASK`: the shipped default bundle for a task (`pipelines/defaults/TASK/` or
  `ugpnet/defaults/TASK/`), or whatever resolver is registered for the `default` scheme;
- `preset:NAME` or `preset:NAME@SEED`: fresh random weights of a preset (tests and demos only).

The model version recorded in every manifest row is the content hash of `model.safetensors`, so two
references to the same weights (a path and a registry alias) count as the same version on re-runs.
"""

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ugpnet.checkpoint import CONFIG_FILE, WEIGHTS_FILE

HASH_CHUNK = 8 << 20


class ModelRefError(ValueError):
    """The reference cannot be resolved to a bundle; the message says which form was expected."""


@dataclass(frozen=True)
class ResolvedModel:
    ref: str                      # as the user wrote it
    bundle_dir: str               # local bundle directory on the driver
    model_version: str            # "sha256-<16 hex>" of model.safetensors
    registry_version: str | None  # "NAME/VERSION" for models:/ references
    preset: str
    task: str
    input_size: int               # pixels the model takes (square)
    scale: int
    weights_bytes: int            # size of model.safetensors

    def describe(self) -> dict:
        return {"ref": self.ref, "version": self.model_version, "registry_version": self.registry_version,
                "preset": self.preset, "task": self.task, "input_size": self.input_size, "scale": self.scale}


def cache_dir() -> Path:
    return Path(os.environ.get("UGPNET_CACHE", Path.home() / ".cache" / "ugpnet"))


def resolve_model(ref: str) -> ResolvedModel:
    ref = str(ref).strip()
    if not ref:
        raise ModelRefError("empty model reference")
    registry_version = None
    if ref.startswith("models:/"):
        bundle, registry_version = _registry_bundle(ref)
    elif ref.startswith("preset:"):
        bundle = _preset_bundle(ref[len("preset:"):])
    elif ref == "default" or ref.startswith("default:"):
        bundle = _default_bundle(ref)
    else:
        bundle = Path(ref).expanduser()
        if not bundle.is_dir():
            raise ModelRefError(f"model reference {ref!r} is not a bundle directory, models:/NAME@ALIAS, "
                                f"models:/NAME/VERSION, default[:TASK] or preset:NAME")
    return _describe_bundle(ref, bundle, registry_version)


def load_payload(model: ResolvedModel) -> dict:
    """What a model actor needs to build the model anywhere in the cluster: the bundle config
    (JSON text) and the safetensors bytes. Shipped through the object store, not a shared disk."""
    bundle = Path(model.bundle_dir)
    return {"config": (bundle / CONFIG_FILE).read_text(), "weights": (bundle / WEIGHTS_FILE).read_bytes(),
            "version": model.model_version}


def _describe_bundle(ref: str, bundle: Path, registry_version: str | None) -> ResolvedModel:
    from ugpnet.checkpoint import read_bundle_config
    from ugpnet.presets import Preset

    weights = bundle / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelRefError(f"{bundle} is not a UGPNet bundle: {WEIGHTS_FILE} is missing")
    try:
        config = read_bundle_config(bundle)
        preset = Preset.from_dict(config["preset"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelRefError(f"{bundle}: unreadable bundle config: {err}") from err
    return ResolvedModel(ref=ref, bundle_dir=str(bundle.resolve()), model_version=_content_version(weights),
                         registry_version=registry_version, preset=preset.name,
                         task=config.get("task") or preset.task, input_size=preset.input_size, scale=preset.scale,
                         weights_bytes=weights.stat().st_size)


def _content_version(weights: Path) -> str:
    digest = hashlib.sha256()
    with open(weights, "rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return f"sha256-{digest.hexdigest()[:16]}"


def _registry_bundle(ref: str) -> tuple[Path, str]:
    try:
        from pipelines.registry import download_bundle, parse_ref
    except ImportError as err:  # the registry needs MLflow
        raise ModelRefError(f"{ref}: MLflow model references need mlflow installed ({err})") from err
    parse_ref(ref)  # a malformed ref fails here, before any network call
    try:
        return download_bundle(ref)
    except ModelRefError:
        raise
    except Exception as err:  # MlflowException, connection errors: all mean "cannot resolve"
        raise ModelRefError(f"cannot resolve {ref} in the MLflow registry: {err}") from err


def _default_bundle(ref: str) -> Path:
    from ugpnet.checkpoint import DEFAULT_TASK, default_bundle

    try:
        return default_bundle(ref.partition(":")[2] or DEFAULT_TASK)
    except FileNotFoundError as err:
        raise ModelRefError(f"{err}; pass a bundle directory, models:/NAME@ALIAS or preset:NAME instead") from None


def _preset_bundle(spec: str) -> Path:
    """Random weights of a preset, saved once as a bundle in the cache (deterministic per seed)."""
    import ugpnet

    name, _, seed_text = spec.partition("@")
    try:
        seed = int(seed_text) if seed_text else 0
    except ValueError:
        raise ModelRefError(f"preset:{spec}: the seed after '@' must be an integer") from None
    try:
        ugpnet.get_preset(name)
    except ValueError as err:
        raise ModelRefError(str(err)) from None
    target = cache_dir() / "presets" / f"{name}-seed{seed}"
    if (target / CONFIG_FILE).is_file() and (target / WEIGHTS_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model = ugpnet.build(name, seed=seed)
        ugpnet.save(model, staging, provenance={"source": f"preset:{name}", "seed": seed,
                                                "note": "random weights, for tests and demos"})
        try:
            staging.rename(target)  # atomic: concurrent resolvers never see half a bundle
        except OSError:
            if not (target / CONFIG_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
