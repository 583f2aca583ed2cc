"""`--model` references, resolved once on the driver to a local bundle and a concrete version, and
the one payload every remote stage (restore, evaluate, train) rebuilds its model from.

The references are those ugpnet.model_refs resolves (a bundle directory, `default[:TASK]`,
`preset:NAME[@SEED]`, `SCHEME:…` through the `ugpnet.model_refs` entry points); `models:/NAME@ALIAS` and
`models:/NAME/VERSION` are fetched here directly from pipelines.registry.store, which also says which registry
version the alias pointed at.

The model version recorded in every manifest row is the content hash of `model.safetensors`, so two
references to the same weights (a path and a registry alias) count as the same version on re-runs.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ugpnet.checkpoint import CONFIG_FILE, DISCRIMINATOR_FILE, WEIGHTS_FILE, read_bundle_config
from ugpnet.model import UGPNet
from ugpnet.model_refs import ModelRefError, resolve_ref
from ugpnet.presets import Preset
from ugpnet.state_dicts import load_state_dict_strict

REGISTRY_SCHEME = "models:"
HASH_CHUNK = 8 << 20


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


def resolve_model(ref: str) -> ResolvedModel:
    ref = str(ref).strip()
    if not ref:
        raise ModelRefError("empty model reference")
    if ref.startswith(REGISTRY_SCHEME):
        bundle, registry_version = _registry_bundle(ref)
    else:
        bundle, registry_version = resolve_ref(ref), None
    return _describe_bundle(ref, bundle, registry_version)


def load_payload(model: ResolvedModel) -> dict:
    """The payload of a resolved model (see bundle_payload), named by its version in load errors."""
    return bundle_payload(Path(model.bundle_dir), source=f"model {model.model_version}")


def bundle_payload(bundle: Path, *, source: str, with_discriminator: bool = False) -> dict[str, bytes | str | None]:
    """What a remote stage needs to build the model anywhere in the cluster, shipped through the object
    store rather than a shared disk: the bundle config (JSON text), the safetensors bytes, optionally
    the discriminator's, and `source`, where the bundle came from (named in load errors)."""
    discriminator = bundle / DISCRIMINATOR_FILE
    return {"source": source, "config": (bundle / CONFIG_FILE).read_text(),
            "weights": (bundle / WEIGHTS_FILE).read_bytes(),
            "discriminator": discriminator.read_bytes() if with_discriminator and discriminator.is_file() else None}


def payload_model(payload: dict, device="cpu", *, assign: bool = True) -> UGPNet:
    """The UGPNet of a payload (see bundle_payload), strictly loaded, in eval mode, with its bundle config.
    `assign`: the module keeps the tensors just read from the bytes, no second full copy of the weights."""
    from safetensors.torch import load as load_safetensors

    config = json.loads(payload["config"])
    model = UGPNet(Preset.from_dict(config["preset"]))
    load_state_dict_strict(model, load_safetensors(payload["weights"]), payload.get("source") or "model payload",
                           assign=assign)
    model.bundle_config = config
    return model.to(device).eval()


def _describe_bundle(ref: str, bundle: Path, registry_version: str | None) -> ResolvedModel:
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
        from pipelines.registry.store import download_bundle, parse_ref
    except ImportError as err:  # the registry needs MLflow
        raise ModelRefError(f"{ref}: MLflow model references need mlflow installed ({err})") from err
    parse_ref(ref)  # a malformed ref fails here, before any network call
    try:
        return download_bundle(ref)
    except ModelRefError:
        raise
    except Exception as err:  # MlflowException, connection errors: all mean "cannot resolve"
        raise ModelRefError(f"cannot resolve {ref} in the MLflow registry: {err}") from err
