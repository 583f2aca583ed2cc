"""One model resolver (issue 12): `ugpnet.load` and the pipelines' `--model` accept the same references
and give the same bundle; one cache directory ($UGPNET_CACHE); one payload for every remote stage."""

import dataclasses
from pathlib import Path

import pytest
import torch

import ugpnet
from pipelines.common.models import ModelRefError, bundle_payload, load_payload, payload_model, resolve_model
from ugpnet.model_refs import cache_dir
from ugpnet.presets import PRESETS


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("UGPNET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tiny_bundle(tmp_path) -> Path:
    return ugpnet.save(ugpnet.build("tiny_denoise", seed=5), tmp_path / "tiny")


def weights_equal(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    one, other = first.state_dict(), second.state_dict()
    return one.keys() == other.keys() and all(torch.equal(one[key], other[key]) for key in one)


def test_ugpnet_load_takes_a_preset_reference_and_gives_the_pipeline_s_weights():
    loaded = ugpnet.load("preset:tiny_denoise@3")
    resolved = resolve_model("preset:tiny_denoise@3")
    assert ugpnet.resolve_ref("preset:tiny_denoise@3").resolve() == Path(resolved.bundle_dir)
    assert (loaded.preset.name, resolved.preset) == ("tiny_denoise", "tiny_denoise")
    assert weights_equal(loaded, ugpnet.load(resolved.bundle_dir))
    assert weights_equal(loaded, ugpnet.build("tiny_denoise", seed=3))
    assert weights_equal(ugpnet.load("preset:tiny_denoise"), ugpnet.build("tiny_denoise", seed=0))  # seed 0


@pytest.mark.parametrize("ref", ["default", "default:deblur", "preset:tiny_sr_x8@2", "bundle"])
def test_both_resolvers_give_the_same_bundle(ref, tiny_bundle):
    ref = str(tiny_bundle) if ref == "bundle" else ref
    assert Path(resolve_model(ref).bundle_dir) == ugpnet.resolve_ref(ref).resolve()


def test_one_name_and_seed_give_one_content_hash_in_any_cache(tmp_path, monkeypatch):
    versions = []
    for folder in ("first", "second"):
        monkeypatch.setenv("UGPNET_CACHE", str(tmp_path / folder))
        versions.append(resolve_model("preset:tiny_deblur@7").model_version)
        assert Path(resolve_model("preset:tiny_deblur@7").bundle_dir).is_relative_to(tmp_path / folder)
    assert versions[0] == versions[1]
    assert resolve_model("preset:tiny_deblur@8").model_version != versions[0]


def test_a_changed_preset_definition_is_not_served_from_the_cache(monkeypatch):
    before = ugpnet.resolve_ref("preset:tiny_denoise@1")
    changed = dataclasses.replace(PRESETS["tiny_denoise"], fusion_blocks=PRESETS["tiny_denoise"].fusion_blocks + 1)
    monkeypatch.setitem(PRESETS, "tiny_denoise", changed)
    after = ugpnet.resolve_ref("preset:tiny_denoise@1")
    assert after != before
    assert ugpnet.load(after).preset.fusion_blocks == changed.fusion_blocks


def test_resolving_a_preset_leaves_the_caller_s_random_numbers_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    ugpnet.resolve_ref("preset:tiny_denoise@9")  # builds (and seeds) a fresh model
    assert torch.equal(torch.rand(4), expected)


def test_the_one_cache_directory_follows_ugpnet_cache(cache, tmp_path, monkeypatch):
    assert cache_dir() == cache
    assert Path(resolve_model("preset:tiny_denoise@2").bundle_dir).is_relative_to(cache / "presets")
    monkeypatch.setenv("UGPNET_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"  # read at each call, not once at import
    monkeypatch.delenv("UGPNET_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "ugpnet"


def test_registry_downloads_land_in_the_same_cache(cache, tiny_bundle, monkeypatch):
    import shutil

    import mlflow

    import pipelines.registry.store
    from pipelines.registry.store import RegisteredVersion, download_bundle

    def download_artifacts(artifact_uri, dst_path):  # the layout a logged pyfunc model downloads as
        shutil.copytree(tiny_bundle, Path(dst_path) / "artifacts" / "bundle")
        (Path(dst_path) / "MLmodel").write_text(
            "flavors:\n  python_function:\n    artifacts:\n      bundle:\n        path: artifacts/bundle\n")

    monkeypatch.setattr(pipelines.registry.store, "resolve_version",
                        lambda ref: RegisteredVersion("ugpnet-denoise", "2", None, ("champion",)))
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download_artifacts)
    bundle, version = download_bundle("models:/ugpnet-denoise@champion")
    assert version == "ugpnet-denoise/2"
    assert bundle.is_relative_to(cache / "registry")
    assert weights_equal(ugpnet.load(bundle), ugpnet.load(tiny_bundle))


def test_an_unknown_scheme_is_one_error_from_both_resolvers():
    for resolve in (ugpnet.load, resolve_model):
        with pytest.raises(ugpnet.ModelRefError, match=r"no resolver for model reference scheme 'nope'.*models"):
            resolve("nope:thing")
    assert ModelRefError is ugpnet.ModelRefError


def test_a_missing_bundle_is_a_model_ref_error_and_a_file_not_found_error(tmp_path):
    for ref in (tmp_path / "absent", "default:nosuchtask"):
        with pytest.raises(ModelRefError) as raised:
            ugpnet.load(ref)
        assert isinstance(raised.value, FileNotFoundError)


def test_a_preset_seed_must_be_an_integer():
    with pytest.raises(ModelRefError, match="seed after '@' must be an integer"):
        ugpnet.load("preset:tiny_denoise@three")


def test_every_stage_rebuilds_its_model_from_one_payload(tiny_bundle):
    resolved = resolve_model(str(tiny_bundle))
    served = load_payload(resolved)  # restore and evaluate
    started = bundle_payload(tiny_bundle, source="s3://runs/start", with_discriminator=True)  # train
    assert served.keys() == started.keys()
    assert (served["weights"], served["config"]) == (started["weights"], started["config"])
    assert resolved.model_version in served["source"]
    for payload in (served, started):
        for assign in (True, False):
            model = payload_model(payload, assign=assign)
            assert weights_equal(model, ugpnet.load(tiny_bundle)) and not model.training
            assert model.bundle_config == ugpnet.load(tiny_bundle).bundle_config
