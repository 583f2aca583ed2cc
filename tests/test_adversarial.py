"""The adversarial matrix: hostile or careless file names, S3 keys, manifests, configs and overlapping
roots, each with its exact outcome (exit status, error row text, no output, inputs unchanged byte
for byte). Issue 10, points 1, 3, 4, 9 and 11.

Most cases are decided at validation or planning, before Ray starts: they call the CLI in this
process (`pipelines.cli.main`, with Ray forbidden) or the planning functions (`list_inputs`,
`plan_rows`) against a real moto S3 server and real files. Only the last section runs the real
pipeline, on one Ray session shared by the module.
"""

import csv
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from restore_samples import photo

from pipelines import cli, storage
from pipelines.restore_inputs import ManifestPolicy, list_inputs, plan_rows

pytest_plugins = ["services"]

MODEL = "preset:tiny_denoise"


# ---------------------------------------------------------------- helpers

@pytest.fixture
def no_ray(monkeypatch):
    """Every case of the first sections must be decided before any Ray work."""
    import pipelines.evaluate
    import pipelines.restore

    def forbidden():
        raise AssertionError("this case must be decided before Ray is started")

    monkeypatch.setattr(pipelines.restore, "_ensure_ray", forbidden)
    monkeypatch.setattr(pipelines.evaluate, "_execute", lambda *a, **k: forbidden())


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and everything printed (stderr, then stdout)."""
    status = cli.main([str(part) for part in argv])
    printed = capsys.readouterr()
    return status, printed.err + printed.out


def local_tree(root: Path) -> dict[bytes, bytes]:
    """Every file below root (names as bytes: some are not UTF-8) with its content."""
    found = {}
    for directory, _, names in os.walk(os.fsencode(root)):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    found[os.path.relpath(path, os.fsencode(root))] = handle.read()
    return found


def bucket_tree(client, bucket: str) -> dict[str, bytes]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for page in pages for item in page.get("Contents", [])}


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- overlapping roots (point 1)

def _local_roots(root: Path):
    """name → (argv after the verb, expected field, expected text); every input lives under root/data."""
    data = root / "data"
    write(data / "a.png", photo(24, 24, fmt="PNG"))
    write(data / "in" / "x.png", photo(24, 24, seed=1, fmt="PNG"))
    write(data / "in" / "in" / "x.png", photo(24, 24, seed=2, fmt="PNG"))
    (root / "link").symlink_to(data / "in")
    write(data / "list.txt", f"{data}/in/x.png\n{data}/a.png\n".encode())
    return {
        "file input, output its folder": (["--input", data / "a.png", "--output", data], "output",
                                          "contains input"),
        "folder input, output its parent": (["--input", data / "in", "--output", data], "output", "contains input"),
        "output is the input": (["--input", data / "in", "--output", f"{data}/in/"], "output", "same place"),
        "output inside the input": (["--input", data, "--output", data / "out"], "output", "lies inside input"),
        "output is a symlink to the input": (["--input", data / "in", "--output", root / "link"], "output",
                                             "same place"),
        "manifest entries under the output": (["--input", data / "list.txt", "--output", data / "in"], "input",
                                              "contains manifest entry 1"),
    }


LOCAL_ROOT_CASES = ["file input, output its folder", "folder input, output its parent", "output is the input",
                    "output inside the input", "output is a symlink to the input",
                    "manifest entries under the output"]


@pytest.mark.parametrize("case", LOCAL_ROOT_CASES)
def test_restore_refuses_an_output_that_overlaps_a_local_input(case, tmp_path, no_ray, capsys):
    argv, field, text = _local_roots(tmp_path)[case]
    before = local_tree(tmp_path)
    status, err = run_cli(["restore", *argv, "--model", MODEL], capsys)
    assert status == 2 and f"config field '{field}'" in err and text in err, err
    assert local_tree(tmp_path) == before  # nothing written, nothing changed
    assert not (tmp_path / "data" / "out").exists() and not (tmp_path / "data" / "_ugpnet").exists()


S3_ROOT_CASES = {
    "prefix input, output its bucket": ("s3://inputs/in", "s3://inputs", "output", "contains input"),
    "output is the input (trailing slash)": ("s3://inputs/in/", "s3://inputs/in", "output", "same place"),
    "output inside the input bucket": ("s3://inputs", "s3://inputs/out", "output", "lies inside input"),
    "output inside the input prefix": ("s3://inputs/in", "s3://inputs/in/out/", "output", "lies inside input"),
    "output key with an empty segment": ("s3://inputs/in", "s3://outputs/a//b", "output", "empty segment"),
    "input reaching another bucket with ..": ("s3://inputs/../outputs", "s3://outputs/r", "input", "'..' segment"),
}


@pytest.mark.parametrize("case", list(S3_ROOT_CASES))
def test_restore_refuses_an_output_that_overlaps_an_s3_input(case, s3_buckets, no_ray, capsys):
    source, output, field, text = S3_ROOT_CASES[case]
    client = s3_buckets.client()
    for key in ("in/x.png", "in/in/x.png", "in2/y.png"):
        client.put_object(Bucket="inputs", Key=key, Body=photo(24, 24, fmt="PNG"))
    before = bucket_tree(client, "inputs")
    status, err = run_cli(["restore", "--input", source, "--output", output, "--model", MODEL], capsys)
    assert status == 2 and f"config field '{field}'" in err and text in err, err
    assert bucket_tree(client, "inputs") == before and bucket_tree(client, "outputs") == {}


def test_an_s3_manifest_whose_entries_lie_under_the_output_is_refused(s3_buckets, no_ray, capsys):
    client = s3_buckets.client()
    client.put_object(Bucket="outputs", Key="res/x.png", Body=photo(24, 24, fmt="PNG"))
    client.put_object(Bucket="inputs", Key="lists/m.txt", Body=b"s3://outputs/res/x.png\n")
    before = bucket_tree(client, "outputs")
    status, err = run_cli(["restore", "--input", "s3://inputs/lists/m.txt", "--output", "s3://outputs/res",
                           "--manifest-buckets", "outputs", "--model", MODEL], capsys)
    assert status == 2 and "config field 'input'" in err and "contains manifest entry 1" in err, err
    assert bucket_tree(client, "outputs") == before


def test_siblings_sharing_a_string_prefix_do_not_overlap():
    spec = storage.s3_spec_from_env()
    storage.disjoint_roots(storage.resolve("s3://b/in2", spec), "output", {"input": storage.resolve("s3://b/in", spec)})
    storage.disjoint_roots(storage.resolve("/data/in2"), "output", {"input": storage.resolve("/data/in")})


ARCHIVE_ROOT_CASES = {
    "dest contains source": ("s3://inputs/photos", "s3://inputs", "s3://outputs/state", "dest", "contains source"),
    "dest inside source": ("s3://inputs/photos", "s3://inputs/photos/out", "s3://outputs/state", "dest",
                           "lies inside source"),
    "state inside source": ("s3://inputs/photos", "s3://outputs/r", "s3://inputs/photos/state", "state",
                            "lies inside source"),
    "state is dest (trailing slash)": ("s3://inputs/photos", "s3://outputs/r", "s3://outputs/r/", "state",
                                       "same place"),
    "state inside dest": ("s3://inputs/photos", "s3://outputs/r", "s3://outputs/r/state", "state",
                          "lies inside dest"),
}


@pytest.mark.parametrize("case", list(ARCHIVE_ROOT_CASES))
def test_archive_refuses_overlapping_roots(case, capsys):
    source, dest, state, field, text = ARCHIVE_ROOT_CASES[case]
    status, err = run_cli(["archive", "--source", source, "--dest", dest, "--state", state, "--model", MODEL,
                           "--dry-run"], capsys)
    assert status == 2 and f"config field '{field}'" in err and text in err, err


@pytest.mark.parametrize(("report", "text"), [("data/report", "lies inside data"), ("data", "same place"),
                                              (".", "contains data")])
def test_evaluate_refuses_a_report_that_overlaps_the_data(report, text, tmp_path, no_ray, capsys, monkeypatch):
    write(tmp_path / "data" / "a.png", photo(64, 64, fmt="PNG"))
    monkeypatch.chdir(tmp_path)
    before = local_tree(tmp_path)
    status, err = run_cli(["evaluate", "--data", "data", "--task", "denoise", "--report", report,
                           "--model", MODEL], capsys)
    assert status == 2 and "config field 'report'" in err and text in err, err
    assert local_tree(tmp_path) == before


# ---------------------------------------------------------------- configs (point 11)

RESTORE_CONFIGS = {  # YAML text of one bad field → the field named
    "actors: 1.5": "actors", "actors: null": "actors", "actors: '2.5'": "actors", "actors: true": "actors",
    "actors: '²'": "actors",
    "extensions: 5": "extensions", "extensions: [5]": "extensions", "run_id: '.'": "run_id",
    "run_id: '..'": "run_id", "run_id: \"a\\nb\"": "run_id", "batch_size: '4'": "batch_size",
    "quality: null": "quality", "overwrite: 'yes'": "overwrite", "suffix: \"x\\ny\"": "suffix",
    "manifest_buckets: 's3://x'": "manifest_buckets", "max_error_rate: .nan": "max_error_rate",
    "allow_local_manifest_paths: 1": "allow_local_manifest_paths",
}


@pytest.mark.parametrize("line", list(RESTORE_CONFIGS))
def test_a_bad_restore_config_field_is_named(line, tmp_path, no_ray, capsys):
    settings = write(tmp_path / "restore.yaml", f"input: {tmp_path}/in\noutput: {tmp_path}/out\n{line}\n".encode())
    status, err = run_cli(["restore", "--config", settings], capsys)
    assert status == 2 and f"config field '{RESTORE_CONFIGS[line]}'" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("flag", "value", "field"), [("--input", "gs://x/in", "input"),
                                                      ("--output", "gs://x/out", "output")])
def test_an_unsupported_scheme_is_named(flag, value, field, tmp_path, no_ray, capsys):
    argv = {"--input": str(tmp_path), "--output": str(tmp_path / "out"), flag: value}
    status, err = run_cli(["restore", *[part for pair in argv.items() for part in pair], "--model", MODEL], capsys)
    assert status == 2 and f"config field '{field}'" in err and "unsupported URI scheme" in err, err


ARCHIVE_CONFIGS = {
    "extensions: 5": "extensions", "run_id: '.'": "run_id", "max_items: 1.5": "max_items",
    "restore: {actors: 1.5}": "restore.actors", "source: gs://x/photos": "source",
    "restore: {manifest_buckets: [x]}": "restore.manifest_buckets", "lease_ttl_s: null": "lease_ttl_s",
}


@pytest.mark.parametrize("line", list(ARCHIVE_CONFIGS))
def test_a_bad_archive_config_field_is_named(line, tmp_path, capsys):
    base = {"source": "s3://inputs/photos", "dest": "s3://outputs/r", "state": "s3://outputs/state", "model": MODEL}
    key = line.split(":", 1)[0]
    text = "".join(f"{k}: {v}\n" for k, v in base.items() if k != key) + line + "\n"
    settings = write(tmp_path / "archive.yaml", text.encode())
    status, err = run_cli(["archive", "--config", settings, "--dry-run"], capsys)
    assert status == 2 and f"config field '{ARCHIVE_CONFIGS[line]}'" in err, err


TRAIN_CONFIGS = {"workers: '2'": "workers", "storage: gs://x": "storage", "use_gpu: 'yes'": "use_gpu",
                 "val_fraction: null": "val_fraction", "stages: 5": "stages", "preset: [tiny_denoise]": "preset",
                 "experiment: 7": "experiment"}


@pytest.mark.parametrize("line", list(TRAIN_CONFIGS))
def test_a_bad_train_config_field_is_named(line, tmp_path, capsys):
    (tmp_path / "clean").mkdir()
    base = {"preset": "tiny_denoise", "data": str(tmp_path / "clean"), "run_name": "r"}
    key = line.split(":", 1)[0]
    text = "".join(f"{k}: {v}\n" for k, v in base.items() if k != key) + line + "\n"
    settings = write(tmp_path / "train.yaml", text.encode())
    status, err = run_cli(["train", "--config", settings, "--dry-run"], capsys)
    assert status == 2 and f"error: {TRAIN_CONFIGS[line]}:" in err, err


def _huge_csv(path: Path) -> None:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["uri"], ["x" * (csv.field_size_limit() + 10)]])


MANIFEST_FILES = {  # a manifest that cannot be read → exit 2 naming input, and why
    "a CSV field over the csv module's limit": ("m.csv", _huge_csv, "field larger than field limit"),
    "a parquet file with no columns": ("m.parquet", lambda p: pq.write_table(pa.table({}), p), "has no columns"),
    "not UTF-8": ("m.txt", lambda p: p.write_bytes(b"secret-\xff-token\n"), "not UTF-8 text (byte 7)"),
    "only comments": ("m.txt", lambda p: p.write_text("# nothing here\n"), "lists no inputs"),
}


@pytest.mark.parametrize("case", list(MANIFEST_FILES))
def test_an_unreadable_manifest_is_named(case, tmp_path, no_ray, capsys):
    name, make, text = MANIFEST_FILES[case]
    make(tmp_path / name)
    status, err = run_cli(["restore", "--input", tmp_path / name, "--output", tmp_path / "out", "--model", MODEL],
                          capsys)
    assert status == 2 and "config field 'input'" in err and text in err, err
    assert "secret" not in err and "Traceback" not in err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- names and keys (points 3, 4, 9): planning

def planned(source_uri: str, output_uri: str, policy: ManifestPolicy | None = None) -> dict[str, tuple]:
    """{input uri: (status, error, output key)} as a restore run would plan them."""
    spec = storage.s3_spec_from_env()
    items, _ = list_inputs(storage.resolve(source_uri, spec), extensions=(".png", ".jpg"), s3=spec,
                            policy=policy or ManifestPolicy())
    rows = plan_rows(items, output_root=storage.resolve(output_uri, spec), ext="png", suffix="", model_version="v",
                     overwrite=False)
    return {row["input_uri"]: (row["status"], row["error"], row["output_rel"]) for row in rows}


def test_a_file_name_that_is_not_utf8_is_one_error_row(tmp_path):
    write(Path(os.fsdecode(os.fsencode(tmp_path) + b"/in/a\xffb.png")), b"png")
    write(tmp_path / "in" / "ok.png", b"png")
    rows = planned(str(tmp_path / "in"), str(tmp_path / "out"))
    assert rows == {f"{tmp_path}/in/a\\xffb.png": ("error", "name: the file name 'a\\\\xffb.png' is not valid "
                                                            "UTF-8; rename it", ""),
                    f"{tmp_path}/in/ok.png": ("pending", "", "ok.png")}


def test_a_single_input_file_whose_name_is_not_utf8_is_refused(tmp_path, no_ray, capsys):
    path = write(Path(os.fsdecode(os.fsencode(tmp_path) + b"/a\xff.png")), b"png")
    status, err = run_cli(["restore", "--input", path, "--output", tmp_path / "out", "--model", MODEL], capsys)
    assert status == 2 and "config field 'input'" in err and "is not valid UTF-8" in err, err


def test_a_file_name_with_a_newline_is_one_error_row(tmp_path):
    write(tmp_path / "in" / "new\nline.png", b"png")
    rows = planned(str(tmp_path / "in"), str(tmp_path / "out"))
    assert rows == {f"{tmp_path}/in/new\nline.png": ("error", "name: key 'new\\nline.png' holds control "
                                                              "characters", "")}


def test_a_long_name_is_shortened_deterministically(tmp_path):
    write(tmp_path / "in" / ("n" * 240 + ".png"), b"png")
    (status, error, key), = planned(str(tmp_path / "in"), str(tmp_path / "out")).values()
    assert status == "pending" and len(key) <= storage.MAX_SEGMENT_BYTES and key.endswith(".png")


S3_KEYS = {  # a key under s3://inputs/in → its error row ("" = pending, mirrored as itself)
    "in//x.png": "name: s3 key 'in//x.png' has an empty segment ('//' or a trailing '/'): it cannot be read or "
                 "mirrored as itself",
    "in/a/../b.png": "name: s3 key 'in/a/../b.png' has a '.' or '..' segment: it cannot be read or mirrored as "
                     "itself",
    "in/./c.png": "name: s3 key 'in/./c.png' has a '.' or '..' segment: it cannot be read or mirrored as itself",
    "in/sp ace/ü.png": "",
}


@pytest.mark.parametrize("key", list(S3_KEYS))
def test_s3_keys_are_opaque(key, s3_buckets):
    """A key that S3 clients would rewrite (`in//x` → `in/x`, `in/a/../b` → `in/b`) is one error row,
    never a read of its neighbour, whose own row is untouched."""
    client = s3_buckets.client()
    client.put_object(Bucket="inputs", Key=key, Body=b"the odd one")
    client.put_object(Bucket="inputs", Key="in/x.png", Body=b"neighbour")
    rows = planned("s3://inputs/in", "s3://outputs/r")
    relative = key[len("in/"):]
    expected_key = "" if S3_KEYS[key] else relative
    assert rows[f"s3://inputs/{key}"] == ("error" if S3_KEYS[key] else "pending", S3_KEYS[key], expected_key)
    if key != "in/x.png":
        assert rows["s3://inputs/in/x.png"] == ("pending", "", "x.png")


S3_MANIFEST_ENTRIES = {  # an entry of s3://inputs/lists/m.txt → (its row's input uri, its error; "" = pending)
    "/etc/hostname": ("/etc/hostname", "manifest: a manifest on S3 may name only S3 objects, not local paths "
                                       "(pass --allow-local-manifest-paths to allow them)"),
    "file:///home/u/.env": ("file:///home/u/.env", "manifest: a manifest on S3 may name only S3 objects, not "
                                                   "local paths (pass --allow-local-manifest-paths to allow them)"),
    "s3://outputs/x.png": ("s3://outputs/x.png", "manifest: a manifest in bucket 'inputs' may name only its own "
                                                 "bucket's objects, not bucket 'outputs' (allow it with "
                                                 "--manifest-buckets outputs)"),
    "s3://inputs/../outputs/x.png": ("s3://inputs/../outputs/x.png", "name: s3 key '../outputs/x.png' has a '.' "
                                     "or '..' segment; S3 clients would read another object"),
    "a/../b.png": ("a/../b.png", "name: s3 key 'lists/a/../b.png' has a '.' or '..' segment; S3 clients would "
                                 "read another object"),
    "ok.png": ("s3://inputs/lists/ok.png", ""),
    "./sub/ok.png": ("s3://inputs/lists/sub/ok.png", ""),
}


@pytest.mark.parametrize("entry", list(S3_MANIFEST_ENTRIES))
def test_an_s3_manifest_names_only_its_own_buckets_objects(entry, s3_buckets):
    client = s3_buckets.client()
    client.put_object(Bucket="inputs", Key="lists/m.txt", Body=f"{entry}\ns3://inputs/lists/good.png\n".encode())
    rows = planned("s3://inputs/lists/m.txt", "s3://outputs/r")
    uri, error = S3_MANIFEST_ENTRIES[entry]
    assert rows[uri][:2] == ("error" if error else "pending", error)
    assert rows["s3://inputs/lists/good.png"][:2] == ("pending", "")


@pytest.mark.parametrize(("entry", "policy"), [
    ("/etc/hostname", ManifestPolicy(allow_local_paths=True)),
    ("s3://outputs/x.png", ManifestPolicy(buckets=("outputs",))),
])
def test_a_manifest_policy_lets_the_user_allow_more(entry, policy, s3_buckets):
    s3_buckets.client().put_object(Bucket="inputs", Key="lists/m.txt", Body=f"{entry}\n".encode())
    (status, error, _), = planned("s3://inputs/lists/m.txt", "s3://outputs/r", policy).values()
    assert (status, error) == ("pending", "")


@pytest.mark.parametrize(("key", "error"), [
    ("../../escape.png", "name: key '../../escape.png' has a '.' or '..' segment"),
    ("/etc/abs.jpg", "name: key '/etc/abs.jpg' is absolute"),
    ("we\x01ird.jpg", "name: key 'we\\x01ird.jpg' holds control characters"),
    ("a//b.jpg", "name: key 'a//b.jpg' has an empty segment ('//' or a trailing '/')"),
])
def test_a_manifest_output_key_that_would_need_rewriting_is_one_error_row(key, error, tmp_path):
    write(tmp_path / "a.png", b"png")
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows([["uri", "key"], ["a.png", key], ["a.png", "fine.png"]])
    items, _ = list_inputs(storage.resolve(str(manifest)), extensions=(".png",), s3=storage.s3_spec_from_env())
    rows = plan_rows(items, output_root=storage.resolve(str(tmp_path / "out")), ext="png", suffix="",
                     model_version="v", overwrite=False)
    assert [(row["status"], row["error"], row["output_rel"]) for row in rows] == [
        ("error", error, ""), ("pending", "", "fine.png")]


def test_the_archive_listing_reports_a_name_that_is_not_utf8_and_goes_on(tmp_path, capsys):
    """Its key could not be stored in the state (parquet strings are UTF-8): said, skipped, never fatal."""
    from pipelines.archive_listing import list_source

    write(Path(os.fsdecode(os.fsencode(tmp_path) + b"/src/a\xff.png")), b"png")
    write(tmp_path / "src" / "b.png", b"png")
    keys = [entry.key for entry in list_source(storage.resolve(str(tmp_path / "src")), extensions=(".png",))]
    assert keys == ["b.png"]
    assert f"skipping '{tmp_path}/src/a\\\\xff.png': its name is not valid UTF-8" in capsys.readouterr().err


# ---------------------------------------------------------------- collisions across runs (engineer F) and
# concurrent runs (engineer G): add their cases here, in the same shape (exact outcome per case).


# ---------------------------------------------------------------- the real pipeline (one Ray session)

def manifest_rows(manifest_uri: str) -> dict[str, dict]:
    location = storage.resolve(manifest_uri)
    table = pads.dataset(location.path, filesystem=location.filesystem, format="parquet").to_table()
    return {row["input_uri"]: row for row in table.to_pylist()}


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_hostile_local_names_and_content_end_as_error_rows(tmp_path, ray_session, capsys):
    """Point 4 (a non-UTF-8 name) and point 9 (file content never quoted) through the whole run."""
    source = tmp_path / "in"
    write(source / "ok.png", photo(40, 32, fmt="PNG"))
    write(Path(os.fsdecode(os.fsencode(source) + b"/bad\xff.png")), photo(40, 32, seed=1, fmt="PNG"))
    write(source / "note.jpg", b"password=hunter2 and the shopping list\n" * 4)
    before = local_tree(source)
    status, err = run_cli(["restore", "--input", source, "--output", tmp_path / "out", "--model", MODEL,
                           "--run-id", "hostile", "--batch-size", "2"], capsys)
    assert status == 0, err
    rows = manifest_rows(str(tmp_path / "out" / "_ugpnet" / "manifest" / "hostile"))
    assert {uri: (row["status"], row["error"]) for uri, row in rows.items()} == {
        f"{source}/ok.png": ("ok", None),
        f"{source}/bad\\xff.png": ("error", "name: the file name 'bad\\\\xff.png' is not valid UTF-8; rename it"),
        f"{source}/note.jpg": ("error", "decode: not an image (looks like text, 156 bytes)"),
    }
    outputs = {path.relative_to(tmp_path / "out").as_posix() for path in (tmp_path / "out").rglob("*")
               if path.is_file() and "_ugpnet" not in path.parts}
    assert outputs == {"ok.png"}
    assert local_tree(source) == before
    everything = b"".join(local_tree(tmp_path / "out").values()) + err.encode()
    assert b"hunter2" not in everything


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_an_unmirrorable_s3_key_does_not_stick_the_archive(s3_buckets, ray_session, capsys):
    """Point 3: `photos//img.jpg` used to make every archive run fail ("lacks planned inputs")."""
    client = s3_buckets.client()
    client.put_object(Bucket="inputs", Key="photos/ok.png", Body=photo(40, 32, fmt="PNG"))
    client.put_object(Bucket="inputs", Key="photos//img.png", Body=photo(40, 32, seed=3, fmt="PNG"))
    before = bucket_tree(client, "inputs")
    argv = ["archive", "--source", "s3://inputs/photos", "--dest", "s3://outputs/r", "--state", "s3://outputs/state",
            "--model", MODEL, "--batch-size", "2"]
    status, err = run_cli([*argv, "--run-id", "first"], capsys)
    assert status == 0, err
    rows = manifest_rows("s3://outputs/r/_ugpnet/manifest/first")
    assert {uri: (row["status"], row["error"]) for uri, row in rows.items()} == {
        "s3://inputs/photos/ok.png": ("ok", None),
        "s3://inputs/photos//img.png": ("error", "name: s3 key 'photos//img.png' has an empty segment ('//' or a "
                                                 "trailing '/'); S3 clients would read another object")}
    status, err = run_cli([*argv, "--run-id", "second"], capsys)
    assert status == 0 and "nothing new or changed" in err, err
    head = json.loads(client.get_object(Bucket="outputs", Key="state/HEAD.json")["Body"].read())
    assert head["version"] == 1
    outputs = {key for key in bucket_tree(client, "outputs") if key.startswith("r/") and "/_ugpnet/" not in key}
    assert outputs == {"r/ok.png"}
    assert bucket_tree(client, "inputs") == before

