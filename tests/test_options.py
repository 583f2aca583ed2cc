"""Every verb's options come from one declaration (pipelines.common.options): its --help shows each option's
default (and unit for numbers), and --config, --set and --dry-run work the same for every verb."""

import argparse
import json

import pytest

from pipelines import cli
from pipelines.common import options
from pipelines.restore.run import RestoreConfig


def leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(verb words, parser) for every verb that runs something: `restore`, `models promote`, …"""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from leaf_parsers(child, (*path, name))


LEAVES = dict(leaf_parsers(cli.build_parser()))


def test_every_verb_is_covered():
    assert set(LEAVES) == {("restore",), ("archive",), ("train",), ("evaluate",), ("demo",), ("presets",),
                           ("import-official",), ("models", "list"), ("models", "register-bundle"),
                           ("models", "promote"), ("data", "prepare")}


@pytest.mark.parametrize("verb", list(LEAVES), ids=" ".join)
def test_help_lists_every_option_with_its_default_and_numbers_with_their_unit(verb):
    parser = LEAVES[verb]
    flags = {option for action in parser._actions for option in action.option_strings}
    assert {"--config", "--set", "--dry-run"} <= flags
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or action.dest in ("help", "config", "overrides", "dry_run"):
            continue
        assert "(default:" in action.help or "required" in action.help or "; default:" in action.help, \
            (verb, action.option_strings, action.help)
        if action.type in (int, float):
            assert "unit:" in action.help, (verb, action.option_strings, action.help)
    assert "(default:" in parser.format_help()


def test_precedence_is_defaults_then_file_then_flags_then_set(tmp_path, capsys):
    settings = tmp_path / "restore.yaml"
    settings.write_text("restore:\n  input: in\n  output: out\n  quality: 80\n  suffix: _file\n  fit: tile\n")
    argv = ["restore", "--config", str(settings), "--quality", "85", "--suffix", "_flag", "--set", "quality=90",
            "--dry-run"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["quality"], printed["suffix"], printed["fit"], printed["ext"]) == (90, "_flag", "tile", "png")
    assert not (tmp_path / "out").exists()


def dry_run_argv(tmp_path) -> dict[tuple[str, ...], list[str]]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return {
        ("restore",): ["--input", str(data), "--output", str(tmp_path / "out")],
        ("archive",): ["--source", str(data), "--dest", str(tmp_path / "out"), "--state", str(tmp_path / "state"),
                       "--model", "default"],
        ("train",): ["--preset", "tiny_denoise", "--data", str(data), "--run-name", "r",
                     "--storage", str(tmp_path / "runs")],
        ("evaluate",): ["--data", str(data), "--task", "denoise", "--report", str(tmp_path / "report"),
                        "--no-baselines"],
        ("demo",): ["--out", str(tmp_path / "demo")],
        ("presets",): [],
        ("import-official",): ["--preset", "tiny_denoise", "--resmodule", "r.pth", "--synmodule", "s.pth",
                               "--fusmodule", "f.pth", "--out", str(tmp_path / "bundle")],
        ("models", "list"): [],
        ("models", "register-bundle"): [str(tmp_path / "bundle")],
        ("models", "promote"): ["ugpnet-denoise", "--version", "3"],
        ("data", "prepare"): ["--dest", str(tmp_path / "prepared")],
    }


# A field of each verb that --set changes, and the value it should then print.
SET_FIELDS = {("restore",): ("quality", "70", 70), ("archive",): ("max_items", "5", 5),
              ("train",): ("workers", "2", 2), ("evaluate",): ("seed", "7", 7), ("demo",): ("task", "deblur", "deblur"),
              ("presets",): ("json", "true", True), ("import-official",): ("preset", "tiny_sr_x8", "tiny_sr_x8"),
              ("models", "list"): ("name", "ugpnet-sr", "ugpnet-sr"),
              ("models", "register-bundle"): ("alias", "staging", "staging"),
              ("models", "promote"): ("alias", "stable", "stable"), ("data", "prepare"): ("max_side", "512", 512)}


@pytest.mark.parametrize("verb", list(LEAVES), ids=" ".join)
def test_dry_run_and_set_work_for_every_verb_and_touch_nothing(verb, tmp_path, capsys):
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = dry_run_argv(tmp_path)[verb]
    name, text, value = SET_FIELDS[verb]
    assert cli.main([*verb, *argv, "--set", f"{name}={text}", "--dry-run"]) == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    assert printed[name] == value
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*before, "data"})  # nothing written


# One wrongly typed value per verb, given in a config file: exit 2 naming the field.
WRONG_TYPES = {("restore",): ("quality", "high"), ("archive",): ("keep_versions", "many"),
               ("train",): ("workers", "two"), ("evaluate",): ("seed", "[1]"), ("demo",): ("fit", "7"),
               ("presets",): ("json", "'yes'"), ("import-official",): ("out", "[a, b]"),
               ("models", "list"): ("name", "{a: 1}"), ("models", "register-bundle"): ("alias", "[x]"),
               ("models", "promote"): ("alias", "3"), ("data", "prepare"): ("max_side", "big")}


@pytest.mark.parametrize("verb", list(LEAVES), ids=" ".join)
def test_a_wrong_type_or_unknown_key_in_a_config_file_exits_2_naming_it(verb, tmp_path, capsys):
    argv = dry_run_argv(tmp_path)[verb]
    name, text = WRONG_TYPES[verb]
    flag = "--" + name.replace("_", "-")
    if flag in argv:  # the file's value is the one under test: a flag would override it
        at = argv.index(flag)
        argv = argv[:at] + argv[at + 2:]
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"{name}: {text}\n")
    assert cli.main([*verb, *argv, "--config", str(settings), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"'{name}'" in err or f"{name}:" in err, err
    settings.write_text("no_such_field: 1\n")
    assert cli.main([*verb, *argv, "--config", str(settings), "--dry-run"]) == 2
    assert "no_such_field" in capsys.readouterr().err


def test_checks_come_from_the_declaration():
    config = RestoreConfig(input="a", output="b", quality=101)
    with pytest.raises(options.ConfigError, match="config field 'quality': must be in 1..100"):
        config.validate()
    with pytest.raises(options.ConfigError, match="config field 'overwrite': must be true or false"):
        RestoreConfig(input="a", output="b", overwrite="yes").validate()
    with pytest.raises(options.ConfigError, match="config field 'fit': must be one of resize, tile, error"):
        RestoreConfig(input="a", output="b", fit="stretch").validate()


def test_a_bad_set_is_named(capsys):
    assert cli.main(["presets", "--set", "json", "--dry-run"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
