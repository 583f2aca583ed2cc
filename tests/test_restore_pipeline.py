"""`ugpnet restore` end to end on a real local Ray and a real S3-compatible server (moto, subprocess).

Runs in this process (`restore.run` / `cli.main`) on the session's 2-CPU Ray; the CLI-as-a-process
tests (killing a run, `ray job submit`) are in test_restore_cli.py.
"""

import io
import json
import os
import re
import signal
import threading

import pyarrow.dataset as pads
import pytest
from PIL import Image
from restore_samples import bad_samples, good_samples, photo
from services import ray_children_named, ray_worker_logs, wait_for

import ugpnet
from pipelines import cli
from pipelines.common import storage
from pipelines.restore.run import RestoreConfig, run

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session")]
pytest_plugins = ["services"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return {name: str(ugpnet.save(ugpnet.build(name, seed=0), root / name)) for name in ("tiny_denoise", "tiny_sr_x8")}


def manifest_rows(manifest_uri: str) -> list[dict]:
    location = storage.resolve(manifest_uri)
    return pads.dataset(location.path, filesystem=location.filesystem, format="parquet").to_table().to_pylist()


def s3_objects(client, bucket: str, prefix: str = "") -> dict[str, dict]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"]: item for page in pages for item in page.get("Contents", [])}


def s3_image(client, bucket: str, key: str) -> Image.Image:
    image = Image.open(io.BytesIO(client.get_object(Bucket=bucket, Key=key)["Body"].read()))
    image.load()
    return image


def write_tree(root, samples) -> None:
    for sample in samples:
        path = root / sample.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample.data)


def output_name(key: str, ext: str = "png") -> str:
    return key.rsplit(".", 1)[0] + "." + ext


# ---------------------------------------------------------------- S3 → S3, bad and unusual inputs

@pytest.mark.timeout(300)
def test_s3_to_s3_bad_and_unusual_inputs(s3_buckets, bundles, capsys):
    client = s3_buckets.client()
    good, bad = good_samples(), bad_samples()
    for sample in good + bad:
        client.put_object(Bucket="inputs", Key=f"batch/{sample.name}", Body=sample.data)
    # Object-store-only faults: a 0-byte object, and one that lists but cannot be read (archived to
    # GLACIER: GET answers 403 InvalidObjectState until it is restored).
    client.put_object(Bucket="inputs", Key="batch/bad/zero_object.jpg", Body=b"")
    client.put_object(Bucket="inputs", Key="batch/bad/archived.jpg", Body=photo(40, 30), StorageClass="GLACIER")
    with pytest.raises(client.exceptions.ClientError, match="InvalidObjectState"):
        client.get_object(Bucket="inputs", Key="batch/bad/archived.jpg")
    bad_reasons = {f"batch/{s.name}": s.reason for s in bad}
    bad_reasons["batch/bad/zero_object.jpg"] = "zero bytes"
    bad_reasons["batch/bad/archived.jpg"] = "read: "

    # Through the CLI entry point (in this process), to see its exit status: 8 of 18 errored > 0.2.
    status = cli.main(["restore", "--input", "s3://inputs/batch/", "--output", "s3://outputs/restored/", "--model",
                       bundles["tiny_sr_x8"], "--batch-size", "4", "--run-id", "badrun", "--max-error-rate", "0.2"])
    assert status == 3
    captured = capsys.readouterr()
    assert "restore badrun: 10 ok, 8 error, 0 skipped of 18 inputs" in captured.out

    rows = manifest_rows("s3://outputs/restored/_ugpnet/manifest/badrun")
    by_input = {row["input_uri"]: row for row in rows}
    assert len(rows) == len(by_input) == len(good) + len(bad) + 2
    outputs = s3_objects(client, "outputs", "restored/")
    for sample in good:
        key = f"restored/{output_name(sample.name)}"
        row = by_input[f"s3://inputs/batch/{sample.name}"]
        assert row["status"] == "ok", row
        assert row["output_uri"] == f"s3://outputs/{key}" and key in outputs
        width, height = sample.upright_size
        assert (row["width"], row["height"], row["out_width"], row["out_height"]) == (width, height, 8 * width,
                                                                                      8 * height)
        image = s3_image(client, "outputs", key)
        assert image.size == (8 * width, 8 * height)  # EXIF orientation applied: rotated.jpg comes out portrait
        assert image.mode == ("RGBA" if sample.has_alpha else "RGB")
        assert row["model_version"].startswith("sha256-") and row["model_ref"] == bundles["tiny_sr_x8"]
    alpha = s3_image(client, "outputs", "restored/odd/alpha.png").getchannel("A")
    assert alpha.getpixel((0, 10)) < 40 < 230 < alpha.getpixel((8 * 48 - 1, 10))  # the alpha ramp survived ×8
    for key, reason in bad_reasons.items():
        row = by_input[f"s3://inputs/{key}"]
        assert row["status"] == "error" and reason in row["error"] and row["output_uri"] is None, row
        assert f"restored/{output_name(key.removeprefix('batch/'))}" not in outputs
    assert all(key.startswith("restored/") for key in s3_objects(client, "outputs"))

    summary = json.loads(client.get_object(Bucket="outputs", Key="restored/_ugpnet/runs/badrun.json")["Body"].read())
    assert (summary["ok"], summary["errors"], summary["exit_status"]) == (10, 8, 3)
    assert summary["config"]["input"] == "s3://inputs/batch/"


# ---------------------------------------------------------------- local → local, re-runs

@pytest.mark.timeout(300)
def test_local_to_local_mirrors_paths_and_reruns_skip(tmp_path, bundles):
    samples = good_samples()[:4]
    write_tree(tmp_path / "in", samples)
    (tmp_path / "in" / "readme.txt").write_text("not an input: filtered by extension")
    config = dict(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=bundles["tiny_denoise"],
                  fit="tile", batch_size=4)
    first = run(RestoreConfig(**config, run_id="first"))
    assert (first.total, first.ok, first.errors, first.skipped, first.exit_status) == (4, 4, 0, 0, 0)
    outputs = {sample.name: tmp_path / "out" / output_name(sample.name) for sample in samples}
    for sample in samples:
        with Image.open(outputs[sample.name]) as image:
            assert image.size == sample.upright_size
    mtimes = {name: path.stat().st_mtime_ns for name, path in outputs.items()}

    again = run(RestoreConfig(**config, run_id="again"))
    assert (again.ok, again.skipped) == (0, 4)
    assert {path.stat().st_mtime_ns for path in outputs.values()} == set(mtimes.values())
    rows = manifest_rows(str(tmp_path / "out/_ugpnet/manifest/again"))
    assert sorted(row["status"] for row in rows) == ["skipped"] * 4
    assert all(row["output_uri"] for row in rows)

    redo = run(RestoreConfig(**config, run_id="redo", overwrite=True))
    assert (redo.ok, redo.skipped) == (4, 0)
    runs = sorted(p.name for p in (tmp_path / "out/_ugpnet/runs").iterdir())
    assert runs == ["again.json", "first.json", "redo.json"]
    assert not (tmp_path / "out" / "readme.png").exists()


@pytest.mark.timeout(300)
def test_a_model_actor_logs_the_batch_it_measured(tmp_path, bundles):
    """The start-up decision an operator looks for (the batch the actor measured fastest, and the
    timings it chose from) reaches the worker's log. Ray leaves a worker's root logger at WARNING
    unless it is given a LoggingConfig (json mode), and the INFO line was dropped."""
    write_tree(tmp_path / "in", good_samples()[:2])
    summary = run(RestoreConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                                model=bundles["tiny_denoise"], fit="tile"))
    assert (summary.ok, summary.errors) == (2, 0)
    assert re.search(r"INFO pipelines\.restore\.model_runtime -- model actor fused on cpu \(fp32\): "
                     r"batch \d+ from s/image \{1: ", ray_worker_logs())
    assert "NumPy array is not writable" not in ray_worker_logs()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_split_gives_the_same_outputs_as_fused(tmp_path, bundles):
    write_tree(tmp_path / "in", good_samples()[:3] + [good_samples()[8]])
    common = dict(input=str(tmp_path / "in"), model=bundles["tiny_denoise"], fit="tile", batch_size=3,
                  save_intermediate=True)
    fused = run(RestoreConfig(**common, output=str(tmp_path / "fused")))
    # Both under the default (compact) transport: fused ships its blended images as their exact 8-bit
    # levels, split its output tiles as float32 (as float16 they were within one level only).
    split = run(RestoreConfig(**common, output=str(tmp_path / "split"), stages="split", actors="1,1,1"))
    assert fused.ok == split.ok == 4
    compared = 0
    for path in (tmp_path / "fused").rglob("*.png"):
        if "_ugpnet" in path.parts:
            continue
        twin = tmp_path / "split" / path.relative_to(tmp_path / "fused")
        with Image.open(path) as a, Image.open(twin) as b:
            assert a.mode == b.mode and a.size == b.size
            assert a.tobytes() == b.tobytes(), path  # within 1e-5 before quantising: equal after
        compared += 1
    assert compared == 12  # 4 outputs + 4 restored + 4 synthesized


# ---------------------------------------------------------------- manifest input, unsafe keys

@pytest.mark.timeout(300)
def test_manifest_input_with_unsafe_keys_and_a_missing_object(s3_buckets, bundles, tmp_path):
    client = s3_buckets.client()
    for name in ("a.jpg", "b.png", "c.jpg", "d.jpg"):
        client.put_object(Bucket="inputs", Key=f"m/{name}", Body=photo(50, 40, fmt="PNG" if name.endswith("png") else
                                                                      "JPEG"))
    lines = ['uri,key', 's3://inputs/m/a.jpg,', 's3://inputs/m/b.png,../../escape.png', 's3://inputs/m/c.jpg,/etc/abs.jpg',
             's3://inputs/m/d.jpg,"we\x01ird/na\nme.jpg"', 's3://inputs/m/missing.jpg,']
    client.put_object(Bucket="inputs", Key="lists/batch.csv", Body="\n".join(lines).encode())
    summary = run(RestoreConfig(input="s3://inputs/lists/batch.csv", output="s3://outputs/restored", run_id="listed",
                                model=bundles["tiny_denoise"], ext="jpg", suffix="_r", quality=90))
    # Keys that would have to be rewritten to be mirrored (`..`, absolute, control characters) are
    # error rows, not outputs under a rewritten name that another input could also map to.
    assert (summary.total, summary.ok, summary.errors) == (5, 1, 4)
    keys = {key for key in s3_objects(client, "outputs") if "/_ugpnet/" not in key}
    assert keys == {"restored/a_r.jpg"}
    assert s3_image(client, "outputs", "restored/a_r.jpg").format == "JPEG"
    rows = {row["input_uri"]: row for row in manifest_rows("s3://outputs/restored/_ugpnet/manifest/listed")}
    assert rows["s3://inputs/m/missing.jpg"]["status"] == "error"
    assert rows["s3://inputs/m/missing.jpg"]["error"].startswith("read: ")
    for name, reason in (("b.png", "'..' segment"), ("c.jpg", "is absolute"), ("d.jpg", "control characters")):
        row = rows[f"s3://inputs/m/{name}"]
        assert row["status"] == "error" and row["error"].startswith("name: ") and reason in row["error"], row


# ---------------------------------------------------------------- fault: a model actor is SIGKILLed

@pytest.mark.slow
@pytest.mark.timeout(400)
def test_killing_a_model_actor_mid_run_loses_nothing(tmp_path, bundles):
    count = 24
    for index in range(count):
        path = tmp_path / "in" / f"part{index % 3}" / f"img{index:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo(160, 160, seed=index))
    out = tmp_path / "out"

    def outputs() -> list:
        return [p for p in out.rglob("*.png") if "_ugpnet" not in p.parts] if out.exists() else []

    killed = {}

    def kill_an_actor_mid_run():
        try:
            wait_for(lambda: len(outputs()) >= 2, timeout_s=240, interval_s=0.05, what="first outputs")
            pid = wait_for(lambda: ray_children_named("ModelStage"), timeout_s=30, what="model actor")[0]
            killed["outputs_before"] = len(outputs())
            os.kill(pid, signal.SIGKILL)
            killed["pid"] = pid
        except Exception as err:  # reported by the main thread
            killed["error"] = err

    killer = threading.Thread(target=kill_an_actor_mid_run, daemon=True)
    killer.start()
    summary = run(RestoreConfig(input=str(tmp_path / "in"), output=str(out), model=bundles["tiny_denoise"],
                                fit="tile", batch_size=2, rows_per_block=2, run_id="survivor"))
    killer.join(timeout=60)
    assert "error" not in killed, killed.get("error")
    assert "pid" in killed and killed["outputs_before"] < count, killed
    assert (summary.total, summary.ok, summary.errors) == (count, count, 0)
    assert len(outputs()) == count
    rows = manifest_rows(str(out / "_ugpnet/manifest/survivor"))
    assert len(rows) == len({row["input_uri"] for row in rows}) == count
    assert {row["status"] for row in rows} == {"ok"}
