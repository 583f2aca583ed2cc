"""Model references → local bundle directories: the one resolver behind `ugpnet.load` and every
verb's `--model`.

Accepted references:
- a bundle directory (`model.safetensors` + `ugpnet.json`);
- `default` or `default:TASK`: the bundle shipped in `ugpnet/defaults/TASK/`;
- `preset:NAME` or `preset:NAME@SEED`: fresh random weights of a preset (seed 0 unless given), written
  once into cache_dir()/presets/ (tests and demos only);
- any other `SCHEME:…`: the resolver registered for SCHEME under the `ugpnet.model_refs` entry-point
  group, e.g. `models:/NAME@ALIAS` from pipelines.registry.store, which needs MLflow (this library never
  imports it).
"""

import hashlib
import json
import os
import shutil
import tempfile
from importlib.metadata import entry_points
from pathlib import Path

import torch

from ugpnet.catalog import build
from ugpnet.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_bundle, save
from ugpnet.model import UGPNet
from ugpnet.presets import get_preset
from ugpnet.tasks import DEFAULT_TASK

REF_RESOLVERS_GROUP = "ugpnet.model_refs"
DEFAULT_SCHEME = "default"
PRESET_SCHEME = "preset"
DEFAULTS_DIR = Path(__file__).parent / "defaults"
CACHE_ENV = "UGPNET_CACHE"


class ModelRefError(ValueError):
    """The reference cannot be resolved to a bundle; the message says which form was expected."""


class BundleNotFoundError(ModelRefError, FileNotFoundError):
    """The reference names a bundle that is not there (a path, a shipped default). Also a
    FileNotFoundError: what `ugpnet.load` raised for these before references had their own error."""


def cache_dir() -> Path:
    """The project's one on-disk cache (preset bundles, registry downloads, photo sources, compile
    caches): $UGPNET_CACHE, else ~/.cache/ugpnet. Read at each call, so a changed environment counts."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ugpnet").expanduser()


def load(ref: str | os.PathLike, device: str | torch.device = "cpu") -> UGPNet:
    """Load a model from any reference this module resolves (see the module docstring)."""
    return load_bundle(resolve_ref(ref), device)


def resolve_ref(ref: str | os.PathLike) -> Path:
    """The local bundle directory a reference names (see the module docstring for the forms)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    scheme, sep, rest = str(ref).partition(":")
    if scheme == DEFAULT_SCHEME and (rest or not sep):
        return default_bundle(rest or DEFAULT_TASK)
    if scheme == PRESET_SCHEME and sep:
        return preset_bundle(rest)
    if sep:
        for entry in entry_points(group=REF_RESOLVERS_GROUP, name=scheme):
            return Path(entry.load()(str(ref)))
        raise ModelRefError(f"no resolver for model reference scheme {scheme!r} in {str(ref)!r} "
                            f"(registered: {', '.join(registered_schemes()) or 'none'})")
    raise BundleNotFoundError(f"model reference {str(ref)!r} is not a bundle directory, default[:TASK], "
                              f"preset:NAME[@SEED] or SCHEME:… of a registered resolver "
                              f"({', '.join(registered_schemes()) or 'none registered'})")


def registered_schemes() -> list[str]:
    return sorted({entry.name for entry in entry_points(group=REF_RESOLVERS_GROUP)})


def default_bundle(task: str) -> Path:
    """The default model shipped inside this package for `task` (denoise | deblur | sr)."""
    bundle = DEFAULTS_DIR / task
    if not (bundle / CONFIG_FILE).is_file():
        shipped = sorted(p.name for p in DEFAULTS_DIR.glob("*") if (p / CONFIG_FILE).is_file())
        raise BundleNotFoundError(f"no shipped default model for task {task!r} in {DEFAULTS_DIR} "
                                  f"(shipped: {', '.join(shipped) or 'none'}); pass a bundle directory "
                                  f"or preset:NAME instead")
    return bundle


def preset_bundle(spec: str) -> Path:
    """`NAME[@SEED]`'s random weights, saved once as a bundle in the cache. The folder is keyed by the
    name, the seed and a digest of the preset's definition, so one NAME@SEED always gives the same
    weights and a preset whose definition changed is built afresh instead of served stale."""
    name, _, seed_text = spec.partition("@")
    try:
        seed = int(seed_text) if seed_text else 0
    except ValueError:
        raise ModelRefError(f"preset:{spec}: the seed after '@' must be an integer") from None
    try:
        preset = get_preset(name)
    except ValueError as err:
        raise ModelRefError(str(err)) from None
    definition = hashlib.sha256(json.dumps(preset.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    target = cache_dir() / "presets" / f"{name}-seed{seed}-{definition}"
    if (target / CONFIG_FILE).is_file() and (target / WEIGHTS_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        with torch.random.fork_rng(devices=[]):  # seeding the build leaves the caller's generator alone
            model = build(preset, seed=seed)
        save(model, staging, provenance={"source": f"{PRESET_SCHEME}:{name}", "seed": seed,
                                         "note": "random weights, for tests and demos"})
        try:
            staging.rename(target)  # atomic: concurrent resolvers never see half a bundle
        except OSError:
            if not (target / CONFIG_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
