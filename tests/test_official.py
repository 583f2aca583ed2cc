"""The official-checkpoint importer: accepted layouts, one strict error, no unpickling of code."""

import collections

import pytest
import torch

import ugpnet
from pipelines.cli import main as cli_main


def official_files(model, directory, *, wrap_resmodule=None, module_prefix=False, with_discriminator=None):
    state = model.state_dict()

    def part(prefix):
        items = {k[len(prefix):]: v.clone() for k, v in state.items() if k.startswith(prefix)}
        return {f"module.{k}": v for k, v in items.items()} if module_prefix else items

    resmodule = part("resmodule.")
    if wrap_resmodule:
        resmodule = {wrap_resmodule: resmodule}
    synmodule = {name: part(f"synmodule.{name}.") for name in ("generator", "fencoder", "wmodule")}
    if with_discriminator is not None:
        synmodule["discriminator"] = with_discriminator.state_dict()
    paths = {name: directory / f"{name}.pth" for name in ("resmodule", "synmodule", "fusmodule")}
    torch.save(resmodule, paths["resmodule"])
    torch.save(synmodule, paths["synmodule"])
    torch.save(part("fusmodule."), paths["fusmodule"])
    return paths


@pytest.mark.parametrize("layout", [dict(), dict(wrap_resmodule="params"), dict(wrap_resmodule="params_ema"),
                                    dict(module_prefix=True)])
def test_accepted_layouts_import_exactly(layout, tmp_path):
    source = ugpnet.build("tiny_denoise", seed=5)
    paths = official_files(source, tmp_path, **layout)
    imported = ugpnet.import_official("tiny_denoise", **paths)
    for key, value in source.state_dict().items():
        assert torch.equal(value, imported.state_dict()[key]), key


def test_mismatch_lists_missing_unexpected_and_misshaped_keys_in_one_error(tmp_path):
    source = ugpnet.build("tiny_denoise", seed=5)
    paths = official_files(source, tmp_path)
    fusion = torch.load(paths["fusmodule"], weights_only=True)
    del fusion["last.bias"]
    fusion["extra.weight"] = torch.zeros(1)
    fusion["conv.weight"] = torch.zeros(2, 2, 3, 3)
    torch.save(fusion, paths["fusmodule"])
    with pytest.raises(ugpnet.CheckpointMismatchError) as info:
        ugpnet.import_official("tiny_denoise", **paths)
    message = str(info.value)
    assert "missing keys (1): last.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "conv.weight (2, 2, 3, 3) (model expects" in message
    assert info.value.missing == ["last.bias"] and info.value.unexpected == ["extra.weight"]


def test_wrong_preset_for_the_files_fails_strictly(tmp_path):
    paths = official_files(ugpnet.build("tiny_denoise", seed=5), tmp_path)
    with pytest.raises(ugpnet.CheckpointMismatchError, match="restoration module"):
        ugpnet.import_official("tiny_unet_denoise", **paths)


class NotATensor:
    pass


def test_pickled_code_is_never_loaded(tmp_path):
    paths = official_files(ugpnet.build("tiny_denoise", seed=5), tmp_path)
    torch.save({"payload": NotATensor()}, paths["fusmodule"])
    with pytest.raises(ValueError, match="cannot read official checkpoint .*fusmodule.pth"):
        ugpnet.import_official("tiny_denoise", **paths)


def test_synthesis_file_without_generator_is_refused(tmp_path):
    paths = official_files(ugpnet.build("tiny_denoise", seed=5), tmp_path)
    torch.save(collections.OrderedDict(fencoder={}, wmodule={}), paths["synmodule"])
    with pytest.raises(ValueError, match="lacks generator"):
        ugpnet.import_official("tiny_denoise", **paths)


def test_cli_import_official_writes_a_loadable_bundle_with_the_discriminator(tmp_path, capsys):
    from ugpnet.model import build_discriminator

    source = ugpnet.build("tiny_sr_x8", seed=2)
    discriminator = build_discriminator(source.preset)
    paths = official_files(source, tmp_path, wrap_resmodule="params_ema", with_discriminator=discriminator)
    out = tmp_path / "bundle"
    argv = ["import-official", "--preset", "tiny_sr_x8", "--out", str(out)]
    argv += [arg for name, path in paths.items() for arg in (f"--{name}", str(path))]
    assert cli_main(argv) == 0
    assert (out / "discriminator.safetensors").is_file()
    loaded = ugpnet.load(out)
    lq = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        assert torch.equal(loaded(lq), source(lq))
    assert loaded.bundle_config["provenance"]["source"] == "official"


def test_cli_reports_a_bad_checkpoint_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    code = cli_main(["import-official", "--preset", "tiny_denoise", "--resmodule", str(bad), "--synmodule",
                     str(bad), "--fusmodule", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "cannot read official checkpoint" in capsys.readouterr().err
