"""`ugpnet restore` without Ray: config validation, storage safety, input planning, model references,
and the stage functions called directly (including fused vs split equality before quantisation)."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from restore_samples import bad_samples, good_samples, photo

import ugpnet
from pipelines import cli
from pipelines.common import storage
from pipelines.common.models import ModelRefError, load_payload, resolve_model
from pipelines.restore.done_markers import marker_for, output_settings
from pipelines.restore.inputs import InputItem, list_inputs, output_key, plan_rows, read_manifest
from pipelines.restore.lost import LOST_FILE, record_lost_rows
from pipelines.restore.run import ConfigError, RestoreConfig, config_from_args, first_local_input
from pipelines.restore.stages import ModelStage, StageSettings, encode_and_write, read_decode_fit

REPO = Path(__file__).resolve().parent.parent
LOCAL = storage.StorageSpec("local")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return ugpnet.save(ugpnet.build("tiny_denoise", seed=0), tmp_path_factory.mktemp("bundle") / "tiny_denoise")


# ---------------------------------------------------------------- config

def test_defaults_validate():
    config = RestoreConfig(input="in", output="out").validate()
    assert (config.fit, config.stages, config.actors, config.ext) == ("resize", "fused", (1,), "png")
    assert config.pool_sizes == {"fused": 1}
    split = RestoreConfig(input="in", output="out", stages="split", actors="2,1,3").validate()
    assert split.pool_sizes == {"restoration": 2, "synthesis": 1, "fusion": 3}
    assert RestoreConfig(input="in", output="out", stages="split", actors=2).validate().pool_sizes == {
        "restoration": 2, "synthesis": 2, "fusion": 2}


@pytest.mark.parametrize(("field", "value"), [
    ("batch_size", 0), ("batch_size", "4"), ("fit", "crop"), ("stages", "pipelined"), ("actors", "0"),
    ("actors", "two"), ("gpus_per_actor", -1), ("cpus_per_task", 0), ("quality", 101), ("ext", "gif"),
    ("max_error_rate", 1.5), ("extensions", ""), ("suffix", "a/b"), ("run_id", "../escape"),
    ("tile_overlap", -1), ("overwrite", "yes"), ("input", ""), ("max_pixels", 0),
])
def test_a_bad_field_is_named(field, value):
    with pytest.raises(ConfigError, match=f"'{field}'") as caught:
        RestoreConfig(**{"input": "in", "output": "out", field: value}).validate()
    assert caught.value.field == field


def test_split_actors_need_one_or_three_numbers():
    with pytest.raises(ConfigError, match="'actors'.*1 or 3"):
        RestoreConfig(input="in", output="out", stages="split", actors="1,2").validate()
    with pytest.raises(ConfigError, match="'actors'.*fused mode takes 1"):
        RestoreConfig(input="in", output="out", actors="1,1,1").validate()


def test_unknown_config_file_key_is_named():
    with pytest.raises(ConfigError, match="'batchsize'.*unknown"):
        RestoreConfig.from_mapping({"input": "a", "output": "b", "batchsize": 3})


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "restore.yaml"
    path.write_text("input: s3://in/photos/\noutput: s3://out/restored/\nbatch-size: 8\nstages: split\n"
                    "actors: [1, 2, 1]\nextensions: [jpg, png]\n")
    args = cli.build_parser().parse_args(["restore", "--config", str(path), "--batch-size", "2"])
    config = config_from_args(args)
    assert (config.input, config.batch_size, config.actors, config.extensions) == (
        "s3://in/photos/", 2, (1, 2, 1), (".jpg", ".png"))


def test_the_example_config_is_valid():
    example = REPO / "infra" / "configs" / "restore.example.yaml"
    args = cli.build_parser().parse_args(["restore", "--config", str(example)])
    config = config_from_args(args)
    assert config.input.startswith("s3://") and config.output.startswith("s3://")


def test_bad_config_fails_fast_on_the_cli_naming_the_field(tmp_path, capsys, monkeypatch):
    import pipelines.restore.run

    def no_ray():
        raise AssertionError("a bad config must fail before Ray is started")

    monkeypatch.setattr(pipelines.restore.run, "ensure_ray", no_ray)
    assert cli.main(["restore", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--quality", "0"]) == 2
    assert "'quality'" in capsys.readouterr().err
    assert cli.main(["restore", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"),
                     "--model", "preset:tiny_denoise"]) == 2
    assert "'input'" in capsys.readouterr().err
    (tmp_path / "in").mkdir()
    assert cli.main(["restore", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                     "--model", str(tmp_path / "no-bundle")]) == 2
    assert "'model'" in capsys.readouterr().err
    assert cli.main(["restore", "--input", str(tmp_path), "--output", str(tmp_path)]) == 2
    assert "'output'" in capsys.readouterr().err


# ---------------------------------------------------------------- storage

@pytest.mark.parametrize(("key", "safe"), [
    ("a/b/c.jpg", "a/b/c.jpg"), ("win\\dir\\x.jpg", "win/dir/x.jpg"), ("...", "..."), ("a/.hidden", "a/.hidden"),
])
def test_safe_relative_key(key, safe):
    assert storage.safe_relative_key(key) == safe


@pytest.mark.parametrize(("key", "reason"), [
    ("/abs/path.png", "absolute"), ("../../etc/passwd", "'..'"), ("a/./b//c.png", "empty segment"),
    ("new\nline\x00.png", "control"), ("..", "'..'"), ("a\udcff.png", "UTF-8"),
])
def test_unsafe_keys_are_refused_not_rewritten(key, reason):
    """A rewrite (`a//b` → `a/b`) would make two inputs share one output; refusing makes an error row."""
    with pytest.raises(storage.StorageError, match=reason):
        storage.safe_relative_key(key)


def test_long_segments_are_shortened_deterministically():
    key = "x" * 400 + ".jpg"
    safe = storage.safe_relative_key(key)
    assert len(safe.encode()) <= storage.MAX_SEGMENT_BYTES and safe.endswith(".jpg")
    assert safe == storage.safe_relative_key(key) != storage.safe_relative_key("y" + key)


@pytest.mark.parametrize("key", ["", "/", "./.", "//"])
def test_a_key_naming_nothing_is_refused(key):
    with pytest.raises(storage.StorageError):
        storage.safe_relative_key(key)


def test_child_never_leaves_its_root():
    root = storage.Location(LOCAL, "/data/out")
    assert root.child("a/b.png").path == "/data/out/a/b.png"
    for bad in ("../x.png", "/etc/x", "a/../../x", ""):
        with pytest.raises(storage.StorageError):
            root.child(bad)


def test_uris_resolve_and_credentials_in_uris_are_refused(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    location = storage.resolve("s3://bucket/some/prefix/")
    assert (location.path, location.uri, location.spec.endpoint_override) == (
        "bucket/some/prefix", "s3://bucket/some/prefix", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:8")
    assert storage.s3_spec_from_env().endpoint_override == "http://127.0.0.1:8"
    with pytest.raises(storage.StorageError) as caught:
        storage.resolve("s3://AKIA:sekrit@bucket/x")
    assert "sekrit" not in str(caught.value)
    with pytest.raises(storage.StorageError, match="scheme"):
        storage.resolve("gs://bucket/x")


def test_transient_errors_are_retried_and_others_are_not():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("When reading 'b/k': AWS Error SLOW_DOWN during GetObject operation: Please reduce")
        return "data"

    assert storage.with_retries(flaky, sleep=sleeps.append) == "data"
    assert len(calls) == 3 and sleeps == [0.25, 0.5]

    def forbidden():
        calls.append(1)
        raise OSError("AWS Error ACCESS_DENIED during GetObject operation: InvalidObjectState")

    calls.clear()
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        storage.with_retries(forbidden, sleep=sleeps.append)
    assert len(calls) == 1
    # A fault that never heals: every attempt is made, with the back-off capped, then it raises.
    calls.clear(), sleeps.clear()

    def dropped():
        calls.append(1)
        raise OSError("AWS Error NETWORK_CONNECTION during CreateMultipartUpload operation: curlCode: 52")

    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        storage.with_retries(dropped, sleep=sleeps.append)
    assert len(calls) == storage.WHOLE_OPERATION_ATTEMPTS == 10
    assert sleeps == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert storage.is_transient(OSError("AWS Error UNKNOWN (HTTP status 503) during PutObject"))
    assert not storage.is_transient(FileNotFoundError("no such key"))
    assert storage.is_transient(ConnectionResetError("connection reset by peer"))


def test_local_writes_are_atomic_and_make_folders(tmp_path):
    target = storage.Location(LOCAL, str(tmp_path / "deep" / "dir" / "x.bin"))
    storage.write_bytes(target, b"abc")
    assert storage.read_bytes(target) == b"abc"
    assert [p.name for p in (tmp_path / "deep" / "dir").iterdir()] == ["x.bin"]  # no temp file left


# ---------------------------------------------------------------- inputs, output keys, re-runs

@pytest.mark.parametrize(("relative", "ext", "suffix", "key"), [
    ("a/b/c.jpg", "png", "", "a/b/c.png"), ("a/b/c.jpg", "jpg", "_restored", "a/b/c_restored.jpg"),
    ("noext", "png", "", "noext.png"), ("a/.hidden", "webp", "", "a/.hidden.webp"),
])
def test_output_keys_mirror_inputs(relative, ext, suffix, key):
    assert output_key(relative, ext=ext, suffix=suffix) == key


def test_listing_filters_extensions_and_skips_the_output_folder(tmp_path):
    for name in ("a/b/c.JPG", "a/d.png", "notes.txt", "out/old.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    source = storage.Location(LOCAL, str(tmp_path))
    items, kind = list_inputs(source, extensions=(".jpg", ".png"), s3=storage.s3_spec_from_env(),
                              exclude=storage.Location(LOCAL, str(tmp_path / "out")))
    assert kind == "directory"
    assert [item.relative_key for item in items] == ["a/b/c.JPG", "a/d.png"]


def test_manifests_in_three_formats(tmp_path):
    (tmp_path / "imgs" / "x").mkdir(parents=True)
    text = tmp_path / "list.txt"
    text.write_text(f"# inputs\nimgs/x/a.jpg\n\n{tmp_path}/imgs/b.png\ns3://bucket/far/c.jpg\n")
    spec = storage.s3_spec_from_env()
    items = read_manifest(storage.Location(LOCAL, str(text)), spec)
    assert [item.input_uri for item in items] == [f"{tmp_path}/imgs/x/a.jpg", f"{tmp_path}/imgs/b.png",
                                                  "s3://bucket/far/c.jpg"]
    # local and s3 entries share no directory: keys keep their whole (scheme-free) path
    assert items[2].relative_key == "bucket/far/c.jpg"

    csv_path = tmp_path / "list.csv"
    csv_path.write_text('uri,key\nimgs/x/a.jpg,\nimgs/b.png,"../../escape.png"\n')
    items = read_manifest(storage.Location(LOCAL, str(csv_path)), spec)
    assert [item.relative_key for item in items] == ["x/a.jpg", "../../escape.png"]

    parquet_path = tmp_path / "list.parquet"
    pq.write_table(pa.table({"input_uri": ["imgs/x/a.jpg", "imgs/x/d.jpg"]}), parquet_path)
    items = read_manifest(storage.Location(LOCAL, str(parquet_path)), spec)
    assert [item.relative_key for item in items] == ["a.jpg", "d.jpg"]


def test_plan_rows_skips_done_outputs_and_reports_collisions(tmp_path):
    from pipelines.restore.inputs import InputItem

    out = storage.Location(LOCAL, str(tmp_path / "out"))
    settings = output_settings(fit="resize", tile_overlap=None, ext="png", quality=95, save_intermediate=False)
    for key in ("a/done.png", "a/stale.png"):
        storage.write_bytes(out.child(key), b"png")
    stale = marker_for("a/stale.png", "v1", "/in/a/stale.jpg", settings).relative
    for marker in (marker_for("a/done.png", "v2", "/in/a/done.jpg", settings).relative, stale,
                   marker_for("a/gone.png", "v2", "/in/a/gone.jpg", settings).relative):  # gone: output deleted since
        storage.write_bytes(out.child(marker), b"{}")
    items = [InputItem(f"/in/{key}", key) for key in (
        "a/done.jpg", "a/stale.jpg", "a/gone.jpg", "a/new.jpg", "a/new.png", "_ugpnet/x.jpg")]
    rows = {row["input_uri"]: row for row in plan_rows(items, output_root=out, ext="png", suffix="",
                                                        model_version="v2", overwrite=False, settings=settings)}
    assert rows["/in/a/done.jpg"]["status"] == "skipped"
    assert rows["/in/a/stale.jpg"]["status"] == "pending"
    assert json.loads(rows["/in/a/stale.jpg"]["stale_markers"]) == [stale]
    assert rows["/in/a/gone.jpg"]["status"] == "pending"
    assert rows["/in/a/new.jpg"]["status"] == "pending"
    assert rows["/in/a/new.png"]["status"] == "error" and "already the output of /in/a/new.jpg" in \
        rows["/in/a/new.png"]["error"]
    assert rows["/in/_ugpnet/x.jpg"]["status"] == "error" and "reserved" in rows["/in/_ugpnet/x.jpg"]["error"]
    again = plan_rows(items[:1], output_root=out, ext="png", suffix="", model_version="v2", overwrite=True,
                      settings=settings)
    assert again[0]["status"] == "pending"


def test_a_rerun_at_another_precision_redoes_the_output(tmp_path):
    """bf16 outputs differ from fp32 ones: a marker written at fp32 must not make a bf16 run skip."""
    from pipelines.restore.inputs import InputItem

    out = storage.Location(LOCAL, str(tmp_path / "out"))
    fp32 = output_settings(fit="resize", tile_overlap=None, ext="png", quality=95, save_intermediate=False)
    bf16 = output_settings(fit="resize", tile_overlap=None, ext="png", quality=95, save_intermediate=False,
                           precision="bf16")
    storage.write_bytes(out.child("a.png"), b"png")
    storage.write_bytes(out.child(marker_for("a.png", "v1", "/in/a.jpg", fp32).relative), b"{}")
    items = [InputItem("/in/a.jpg", "a.jpg")]
    plan = {name: plan_rows(items, output_root=out, ext="png", suffix="", model_version="v1", overwrite=False,
                            settings=settings)[0]["status"] for name, settings in (("fp32", fp32), ("bf16", bf16))}
    assert plan == {"fp32": "skipped", "bf16": "pending"}


# ---------------------------------------------------------------- model references

def test_bundle_and_preset_references(tiny_bundle, tmp_path, monkeypatch):
    resolved = resolve_model(str(tiny_bundle))
    assert resolved.model_version.startswith("sha256-") and resolved.preset == "tiny_denoise"
    assert (resolved.input_size, resolved.scale) == (64, 1)
    assert resolve_model(str(tiny_bundle)).model_version == resolved.model_version
    monkeypatch.setenv("UGPNET_CACHE", str(tmp_path / "cache"))
    first = resolve_model("preset:tiny_sr_x8@3")
    assert (first.scale, first.input_size) == (8, 8)
    assert resolve_model("preset:tiny_sr_x8@3").model_version == first.model_version
    assert resolve_model("preset:tiny_sr_x8@4").model_version != first.model_version


def test_registry_references_record_the_registry_version(tiny_bundle, monkeypatch):
    import pipelines.registry.store

    asked = []

    def download_bundle(ref):
        asked.append(ref)
        return Path(tiny_bundle), "ugpnet-denoise/3"

    monkeypatch.setattr(pipelines.registry.store, "download_bundle", download_bundle)
    resolved = resolve_model("models:/ugpnet-denoise@champion")
    assert asked == ["models:/ugpnet-denoise@champion"]
    assert resolved.registry_version == "ugpnet-denoise/3"
    assert resolved.model_version == resolve_model(str(tiny_bundle)).model_version  # same weights, same version


@pytest.mark.parametrize(("ref", "message"), [
    ("default:nosuchtask", "no shipped default model for task 'nosuchtask'"),
    ("preset:no_such_preset", "unknown preset"),
    ("models:/just-a-name", "models:/NAME@ALIAS or models:/NAME/VERSION"),
    ("/definitely/not/here", "not a bundle directory"),
])
def test_unresolvable_references_say_what_was_expected(ref, message):
    with pytest.raises(ValueError, match=message):
        resolve_model(ref)
    assert issubclass(ModelRefError, ValueError)


# ---------------------------------------------------------------- stages called directly

def _settings(output: Path, model, **overrides) -> StageSettings:
    values = dict(run_id="r1", model_ref=model.ref, model_version=model.model_version,
                  output_root=storage.Location(LOCAL, str(output)), s3=storage.s3_spec_from_env(),
                  input_size=model.input_size, scale=model.scale, fit="tile", tile_overlap=None,
                  max_pixels=100_000_000, max_output_pixels=400_000_000, ext="png", quality=95,
                  save_intermediate=True)
    values.update(overrides)
    return StageSettings(**values)


def _rows_for(files: dict[str, Path], model_version: str = "v") -> dict:
    markers = [marker_for(key, model_version, str(path), {}).relative for key, path in files.items()]
    return {"input_uri": [str(path) for path in files.values()], "output_rel": list(files),
            "status": ["pending"] * len(files), "error": [""] * len(files), "error_kind": [""] * len(files),
            "stale_markers": ["[]"] * len(files), "marker": markers, "marker_body": ["{}"] * len(files)}


def test_fused_and_split_agree_before_quantisation(tiny_bundle, tmp_path):
    import torch

    from ugpnet.fitting import FitPlan, assemble

    model = resolve_model(str(tiny_bundle))
    payload = load_payload(model)
    samples = {s.name: s for s in good_samples()}
    files = {}
    for name in ("photos/a/beach.jpg", "odd/alpha.png", "odd/strip.png"):
        path = tmp_path / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(samples[name].data)
        files[name.rsplit(".", 1)[0] + ".png"] = path
    decoded = read_decode_fit(_rows_for(files, model.model_version), _settings(tmp_path / "out", model))
    assert decoded["status"] == ["pending"] * 3
    # Split mode's rows carry tile sets; fused mode's carry the canvas (tested below).
    split = read_decode_fit(_rows_for(files, model.model_version),
                            _settings(tmp_path / "out", model, stages="split"))

    def stage(module):
        # float32 transport: this compares the modules' floats (compact rounds outputs to float16)
        return ModelStage(payload, module, batch_size=3, threads=1, use_gpu=False, keep_intermediate=True,
                          transport="float32")

    fused = stage("fused")(dict(decoded))
    for module in ("restoration", "synthesis", "fusion"):
        split = stage(module)(split)
    for column in ("fused", "restored", "synthesized"):
        for a, b, plan in zip(fused[column], split[column], fused["fit_plan"], strict=True):
            b = assemble(torch.from_numpy(np.array(b)), FitPlan.from_json(plan))[0].numpy()
            assert a.shape == b.shape and a.size > 0
            assert np.abs(a - b).max() <= 1e-5
    assert "restoration_feature" not in split and "tiles" not in split and "canvas" not in fused

    table = encode_and_write(fused, _settings(tmp_path / "out", model))
    assert table.column("status").to_pylist() == ["ok"] * 3
    out = tmp_path / "out"
    with Image.open(out / "odd/alpha.png") as image:
        assert image.mode == "RGBA" and image.size == (48, 32)
    for name in files:
        assert (out / name).is_file() and (out / "_intermediate/restored" / name).is_file()
        marker = out / marker_for(name, model.model_version, str(files[name]), {}).relative
        assert json.loads(marker.read_text())["run_id"] == "r1"


def test_fused_mode_streams_tiles_and_ships_assembled_images(tiny_bundle, tmp_path):
    """No full tile set in fused mode: the read stage ships the canvas, the model actor sees only
    chunks of batch_size tiles (one stream over its rows, so one-tile images share a forward pass)
    and ships each image assembled; the write stage encodes it as split mode's blend would."""
    model = resolve_model(str(tiny_bundle))
    files = {}
    for name, (width, height) in {"big.jpg": (300, 200), "a.jpg": (64, 64), "b.jpg": (64, 64)}.items():
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(photo(width, height))
        files[name.replace(".jpg", ".png")] = tmp_path / "in" / name
    settings = _settings(tmp_path / "out", model, save_intermediate=False)
    decoded = read_decode_fit(_rows_for(files, model.model_version), settings)
    assert "tiles" not in decoded and [c.shape for c in decoded["canvas"]] == [(3, 200, 300), (3, 64, 64), (3, 64, 64)]
    stage = ModelStage(load_payload(model), "fused", batch_size=4, threads=1, use_gpu=False, keep_intermediate=False)
    seen = []
    run = stage.runner.run
    stage.runner.run = lambda tiles, **kw: seen.append(tiles.shape[0]) or run(tiles, **kw)
    out = stage(dict(decoded))
    table = encode_and_write(out, settings).to_pylist()
    tiles = [row["tiles"] for row in table]
    assert tiles[0] > 4 and tiles[1:] == [1, 1] and [row["status"] for row in table] == ["ok"] * 3
    # Chunks of 4 over all rows' tiles: the last chunk mixes the big image's last tiles with the small ones.
    assert sum(seen) == sum(tiles) and max(seen) == 4 and len(seen) == -(-sum(tiles) // 4)
    assert [image.shape for image in out["fused"]] == [(3, 200, 300), (3, 64, 64), (3, 64, 64)]
    # The same bytes as split mode, whose rows carry tile sets that the write stage blends.
    split = read_decode_fit(_rows_for(files, model.model_version), _settings(tmp_path / "split", model,
                                                                               save_intermediate=False,
                                                                               stages="split"))
    for module in ("restoration", "synthesis", "fusion"):
        split = ModelStage(load_payload(model), module, 4, 1, False, False)(split)
    encode_and_write(split, _settings(tmp_path / "split", model, save_intermediate=False, stages="split"))
    for name in files:
        fused_pixels = np.asarray(Image.open(tmp_path / "out" / name)).astype(int)
        split_pixels = np.asarray(Image.open(tmp_path / "split" / name)).astype(int)
        # compact: fused rounds to float16 once after the blend, split before it (and keeps the
        # restored image and features float32): within one 8-bit level.
        assert np.abs(fused_pixels - split_pixels).max() <= 1


def test_bad_rows_pass_every_stage_as_one_error_row(tiny_bundle, tmp_path):
    model = resolve_model(str(tiny_bundle))
    files = {}
    for sample in bad_samples() + [good_samples()[0]]:
        path = tmp_path / "in" / sample.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample.data)
        files[sample.name + ".png"] = path
    files["missing.png"] = tmp_path / "in" / "missing.jpg"
    settings = _settings(tmp_path / "out", model, fit="resize", save_intermediate=False)
    batch = read_decode_fit(_rows_for(files), settings)
    batch = ModelStage(load_payload(model), "fused", 4, 1, False, False)(batch)
    table = encode_and_write(batch, settings).to_pylist()
    by_input = {row["input_uri"]: row for row in table}
    for sample in bad_samples():
        row = by_input[str(tmp_path / "in" / sample.name)]
        assert row["status"] == "error" and sample.reason in row["error"] and row["output_uri"] is None
    assert by_input[str(tmp_path / "in" / "missing.jpg")]["error"].startswith("read: ")
    assert by_input[str(tmp_path / "in" / good_samples()[0].name)]["status"] == "ok"
    written = [p for p in (tmp_path / "out").rglob("*.png")]
    assert len(written) == 1


def test_fit_error_policy_makes_an_error_row(tiny_bundle, tmp_path):
    model = resolve_model(str(tiny_bundle))
    path = tmp_path / "small.jpg"
    path.write_bytes(photo(30, 20))
    batch = read_decode_fit(_rows_for({"small.png": path}), _settings(tmp_path / "out", model, fit="error"))
    assert batch["status"] == ["error"] and batch["error"][0].startswith("fit: input is 30×20")
    assert (batch["width"], batch["height"]) == ([30], [20])



def test_pools_that_cannot_be_placed_on_a_local_cluster_are_refused(monkeypatch):
    import ray

    from pipelines.restore.run import check_resources

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "memory": 8 * 2**30})
    check_resources(RestoreConfig(input="i", output="o", stages="split").validate(), 2**30)
    with pytest.raises(ConfigError, match="'actors'.*need 3.5 CPUs"):
        check_resources(RestoreConfig(input="i", output="o", stages="split", actors=2).validate(), 2**30)
    with pytest.raises(ConfigError, match="'gpus_per_actor'"):
        check_resources(RestoreConfig(input="i", output="o", gpus_per_actor=0.5).validate(), 2**30)
    with pytest.raises(ConfigError, match="'actors'.*GiB"):
        check_resources(RestoreConfig(input="i", output="o", actors=3, cpus_per_actor=0.25).validate(), 4 * 2**30)
    monkeypatch.setenv("RAY_ADDRESS", "ray://cluster:10001")  # an existing cluster may grow: no refusal
    check_resources(RestoreConfig(input="i", output="o", stages="split", actors=2).validate(), 2**30)


def test_a_run_id_is_not_reused(tmp_path, tiny_bundle):
    from pipelines.restore.run import run

    (tmp_path / "in").mkdir()
    storage.write_bytes(storage.Location(LOCAL, str(tmp_path / "out/_ugpnet/manifest/r1/part.parquet")), b"x")
    with pytest.raises(ConfigError, match="'run_id'.*already used"):
        run(RestoreConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=str(tiny_bundle),
                          run_id="r1"))


def test_lost_rows_keep_an_error_kind(tmp_path):
    """Memory's lost rows meet the error kinds: a planned error keeps its kind (a lost `name` row stays
    the input's fault), a lost pending row is `internal`; without a kind the run's exit status and the
    archive's retries misjudged them (the kind was null)."""
    manifest = storage.resolve(str(tmp_path / "manifest"))
    rows = [{"input_uri": "/in/a.png", "status": "pending", "error": "", "error_kind": "", "output_rel": "a.png"},
            {"input_uri": "/in/b\\xff.png", "status": "error", "error": "name: not UTF-8", "error_kind": "",
             "output_rel": ""},
            {"input_uri": "/in/c.png", "status": "error", "error": "collision: c.png", "error_kind": "collision",
             "output_rel": ""}]
    assert record_lost_rows(rows, manifest, storage.resolve(str(tmp_path / "out")), run_id="r", model_ref="m",
                            model_version="v", attempts=3) == 3
    table = pq.read_table(tmp_path / "manifest" / LOST_FILE)
    assert dict(zip(table["input_uri"].to_pylist(), table["error_kind"].to_pylist(), strict=True)) == {
        "/in/a.png": "internal", "/in/b\\xff.png": "name", "/in/c.png": "collision"}


def test_a_refused_manifest_entry_is_not_the_local_input_probed_on_other_nodes():
    """Multinode's guard meets the manifest policy: an S3 manifest naming /etc/hostname gets an error
    row for it; probing that path on the cluster's nodes would refuse the whole run over a file it never reads."""
    refused = InputItem("/etc/hostname", "", "manifest: a manifest on S3 may name only S3 objects")
    assert first_local_input([refused, InputItem("s3://in/a.png", "a.png")]) is None
    assert first_local_input([refused, InputItem("/data/b.png", "b.png")]) == "/data/b.png"


def test_a_local_cluster_keeps_enough_idle_workers_for_the_pipelines_tasks(monkeypatch):
    """Ray keeps one idle worker per CPU and its helper and model actors fill those places, so each
    read/decode and encode/write task started (and imported torch in) a fresh process. The local
    cluster `ugpnet` starts is told to keep more; a value the user set is left alone; a cluster
    given in RAY_ADDRESS keeps its own settings."""
    import ray

    from pipelines.common import cluster

    started = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.logs, "init_ray", lambda **kwargs: started.append(
        (os.environ.get(cluster.WORKER_SOFT_LIMIT_VARIABLE), kwargs)))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(cluster.WORKER_SOFT_LIMIT_VARIABLE, raising=False)
    assert cluster.ensure_ray()
    assert started[-1] == ("8", {"include_dashboard": False})

    monkeypatch.setenv(cluster.WORKER_SOFT_LIMIT_VARIABLE, "3")
    cluster.ensure_ray()
    assert started[-1][0] == "3"

    monkeypatch.delenv(cluster.WORKER_SOFT_LIMIT_VARIABLE)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    cluster.ensure_ray()
    assert started[-1] == (None, {})
