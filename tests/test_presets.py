"""Presets: Church variants' key structure, bundle round trips, list_presets."""

import pytest
import torch
from safetensors.torch import load_file

import ugpnet
from ugpnet.model import build_discriminator

OFFICIAL = ["nafnet_deblur", "nafnet_denoise", "hinet_deblur", "hinet_denoise", "rrdb_x8"]


def shapes(module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("preset", [f"{p}_church" for p in OFFICIAL])
def test_church_variant_key_structure(preset):
    with torch.device("meta"):
        model = ugpnet.UGPNet(preset)
        discriminator = build_discriminator(model.preset)
    generator = shapes(model.synmodule.generator)
    assert len(generator) == 123
    assert {k for k in generator if k.startswith("noises.")} == {f"noises.noise{i}" for i in range(13)}
    assert max(int(k.split(".")[1]) for k in generator if k.startswith("style_convs.")) == 11
    assert max(int(k.split(".")[1]) for k in generator if k.startswith("to_rgbs.")) == 5
    assert generator["style_convs.11.activate.bias"] == (128,)
    assert generator["noises.noise12"] == (1, 1, 256, 256)
    fencoder = shapes(model.synmodule.fencoder)
    assert [fencoder[f"downblocks.{i}.conv.0.weight"][0] for i in range(5)] == [32, 64, 128, 256, 512]
    assert "downblocks.5.conv.0.weight" not in fencoder
    wmodule = shapes(model.synmodule.wmodule)
    assert {k for k in wmodule if k.startswith("linear.") and k.endswith("weight")} == {
        f"linear.{i}.weight" for i in range(10)}
    assert shapes(model.fusmodule)["conv.weight"] == (64, 128, 3, 3)
    assert shapes(discriminator)["conv_body.0.0.weight"] == (128, 3, 1, 1)  # 256 px, multiplier 2
    assert model.input_size * model.scale == 256


def test_list_presets_reports_every_preset():
    infos = {info.name: info for info in ugpnet.list_presets()}
    assert set(infos) == set(ugpnet.PRESETS)
    assert infos["rrdb_x8"].input_size == 64 and infos["rrdb_x8"].resolution == 512
    assert infos["rrdb_x8"].scale == 8
    # Reference §2.4/§3.5/§4: restoration + generator + Fencoder + Wmodule + fusion.
    with torch.device("meta"):
        model = ugpnet.UGPNet("nafnet_deblur")
    assert sum(p.numel() for p in model.resmodule.parameters()) == 17_336_166
    assert sum(p.numel() for p in model.synmodule.generator.parameters()) == 30_276_583
    assert sum(p.numel() for p in model.fusmodule.parameters()) == 629_507
    assert infos["nafnet_deblur"].parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(ugpnet.PRESETS))
def test_bundle_round_trip_is_bit_exact(preset, tmp_path):
    model = ugpnet.build(preset, seed=0)
    ugpnet.save(model, tmp_path / "bundle")
    loaded = ugpnet.load(tmp_path / "bundle")
    assert loaded.preset == model.preset
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert original[key].dtype == restored[key].dtype, key
        assert torch.equal(original[key], restored[key]), key
    assert set(load_file(str(tmp_path / "bundle" / "model.safetensors"))) == set(original)


def test_tiny_bundle_gives_identical_outputs(tmp_path):
    model = ugpnet.build("tiny_denoise", seed=1)
    ugpnet.save(model, tmp_path / "b")
    loaded = ugpnet.load(tmp_path / "b")
    lq = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(lq), loaded(lq))


def test_load_rejects_a_directory_that_is_not_a_bundle(tmp_path):
    with pytest.raises(FileNotFoundError, match="ugpnet.json"):
        ugpnet.load(tmp_path)


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown preset 'nope'.*nafnet_deblur"):
        ugpnet.build("nope")
