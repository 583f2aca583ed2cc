"""The adversarial matrix: hostile or careless file names, S3 keys, manifests, configs and overlapping
roots, each with its exact outcome (exit status, error row text, no output, inputs unchanged byte
for byte). Issue 10, points 1, 2 (collisions across runs), 3, 4, 9 and 11.

Most cases are decided at validation or planning, before Ray starts: they call the CLI in this
process (`pipelines.cli.main`, with Ray forbidden) or the planning functions (`list_inputs`,
`plan_rows`) against a real moto S3 server and real files. Only the last section runs the real
pipeline, on one Ray session shared by the module.
"""

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from restore_samples import photo

from pipelines import cli
from pipelines.common import storage
from pipelines.restore.done_markers import DONE_DIR, output_settings, parse_marker
from pipelines.restore.inputs import ManifestPolicy, list_inputs, plan_rows

pytest_plugins = ["services"]

MODEL = "preset:tiny_denoise"


# ---------------------------------------------------------------- helpers

@pytest.fixture
def no_ray(monkeypatch):
    """Every case of the first sections must be decided before any Ray work."""
    import pipelines.evaluate.run
    import pipelines.restore.run

    def forbidden():
        raise AssertionError("this case must be decided before Ray is started")

    monkeypatch.setattr(pipelines.restore.run, "ensure_ray", forbidden)
    monkeypatch.setattr(pipelines.evaluate.run, "_execute", lambda *a, **k: forbidden())


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

SETTINGS = output_settings(fit="resize", tile_overlap=None, ext="png", quality=95, save_intermediate=False)


def planned(source_uri: str, output_uri: str, policy: ManifestPolicy | None = None) -> dict[str, tuple]:
    """{input uri: (status, error, output key)} as a restore run would plan them."""
    spec = storage.s3_spec_from_env()
    items, _ = list_inputs(storage.resolve(source_uri, spec), extensions=(".png", ".jpg"), s3=spec,
                            policy=policy or ManifestPolicy())
    rows = plan_rows(items, output_root=storage.resolve(output_uri, spec), ext="png", suffix="", model_version="v",
                     overwrite=False, settings=SETTINGS)
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
                     model_version="v", overwrite=False, settings=SETTINGS)
    assert [(row["status"], row["error"], row["output_rel"]) for row in rows] == [
        ("error", error, ""), ("pending", "", "fine.png")]


def test_the_archive_listing_reports_a_name_that_is_not_utf8_and_goes_on(tmp_path, capsys):
    """Its key could not be stored in the state (parquet strings are UTF-8): said, skipped, never fatal."""
    from pipelines.archive.listing import list_source

    write(Path(os.fsdecode(os.fsencode(tmp_path) + b"/src/a\xff.png")), b"png")
    write(tmp_path / "src" / "b.png", b"png")
    keys = [entry.key for entry in list_source(storage.resolve(str(tmp_path / "src")), extensions=(".png",))]
    assert keys == ["b.png"]
    assert f"skipping '{tmp_path}/src/a\\\\xff.png': its name is not valid UTF-8" in capsys.readouterr().err


# ---------------------------------------------------------------- collisions across runs (point 2)
# Two `ugpnet restore` runs over one output folder (or S3 prefix), with the input tree or the settings
# changed in between. Each case asserts the second run's exact outcome: exit status, each input's row
# (status and error text), that error and skipped rows wrote nothing (outputs byte for byte as before),
# that inputs are unchanged byte for byte, and that every output is named by exactly one done-marker of
# its own input. Real runs through the CLI on the module's Ray session. (Concurrent runs: the 20-round
# barrier test in test_archive_concurrent.py, real processes.)

A_PNG, A_JPG = photo(20, 16, seed=1, fmt="PNG"), photo(20, 16, seed=2)


@dataclass(frozen=True)
class Case:
    name: str
    first: dict                      # input files of run 1 (relative name -> bytes); {} = no run 1
    change: dict                     # then: name -> bytes (added or rewritten), or None (deleted)
    expect: dict                     # run 2: input name -> (status, error text or "")
    flags_1: tuple = ()
    flags_2: tuple = ()
    exit_status: int = 0
    legacy_markers: bool = False     # rewrite run 1's markers as markers from before the tags were written


COLLIDES = "collision: output 'a.png' is already the output of {in}/a.png (done-marker under _ugpnet/done/"
CASES = [
    Case("sibling_extension_appears", {"a.png": A_PNG}, {"a.jpg": A_JPG},
         {"a.png": ("skipped", ""), "a.jpg": ("error", COLLIDES)}),
    Case("input_renamed_to_another_extension", {"a.png": A_PNG}, {"a.png": None, "a.jpg": A_JPG},
         {"a.jpg": ("error", COLLIDES)}, exit_status=3),  # 1 error of 1 input: exit 3
    Case("two_new_inputs_one_name", {}, {"a.jpg": A_JPG, "a.png": A_PNG},
         {"a.jpg": ("ok", ""), "a.png": ("error", "collision: output 'a.png' is already the output of {in}/a.jpg "
                                                  "in this run; {in}/a.png is not written")}),
    Case("legacy_marker_of_another_input", {"a.png": A_PNG}, {"a.jpg": A_JPG},
         {"a.png": ("ok", ""), "a.jpg": ("error", COLLIDES)}, legacy_markers=True),
    Case("nothing_changed", {"a.png": A_PNG}, {}, {"a.png": ("skipped", "")}),
    Case("input_rewritten_in_place", {"a.png": A_PNG}, {"a.png": photo(20, 16, seed=3, fmt="PNG")},
         {"a.png": ("ok", "")}),
    Case("fit_changed", {"a.png": A_PNG}, {}, {"a.png": ("ok", "")}, flags_2=("--fit", "tile")),
    Case("save_intermediate_added", {"a.png": A_PNG}, {}, {"a.png": ("ok", "")}, flags_2=("--save-intermediate",)),
    Case("jpg_quality_changed", {"a.png": A_PNG}, {}, {"a.png": ("ok", "")}, flags_1=("--ext", "jpg"),
         flags_2=("--ext", "jpg", "--quality", "60")),
    Case("png_quality_changes_no_byte", {"a.png": A_PNG}, {}, {"a.png": ("skipped", "")},
         flags_2=("--quality", "60")),
    Case("model_changed", {"a.png": A_PNG}, {}, {"a.png": ("ok", "")}, flags_2=("--model", MODEL + "@1")),
]


@dataclass
class Tree:
    """An input folder and an output root (a folder, or a prefix on the moto server)."""

    input_root: str
    output_root: str
    inputs: Path
    written: dict = field(default_factory=dict)

    def apply(self, files: dict) -> None:
        for name, data in files.items():
            path = self.inputs / name
            if data is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)

    def input_bytes(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.inputs)): p.read_bytes() for p in sorted(self.inputs.rglob("*")) if p.is_file()}

    def output_files(self) -> dict[str, bytes]:
        root = storage.resolve(self.output_root)
        return {storage.relative_to(root, info.path): storage.read_bytes(storage.Location(root.spec, info.path))
                for info in storage.list_files(root)}


def restore(tree: Tree, run_id: str, flags: tuple) -> int:
    argv = ["restore", "--input", tree.input_root, "--output", tree.output_root, "--model", MODEL,
            "--run-id", run_id, *flags]
    if "--model" in flags:  # the case's own model replaces the default one
        index = argv.index("--model")
        del argv[index:index + 2]
    return cli.main(argv)


def rows_of(tree: Tree, run_id: str) -> dict[str, dict]:
    import pyarrow.dataset as pads

    location = storage.resolve(tree.output_root).child(f"_ugpnet/manifest/{run_id}")
    table = pads.dataset(location.path, filesystem=location.filesystem, format="parquet").to_table()
    return {row["input_uri"]: row for row in table.to_pylist()}


def make_legacy(tree: Tree) -> None:
    """Run 1's markers as an older release wrote them: `<key>@<version>`, body {input_uri, run_id}."""
    root = storage.resolve(tree.output_root)
    for name, data in tree.output_files().items():
        marker = parse_marker(name)
        if marker is not None:
            body = json.loads(data)
            storage.delete_if_exists(root.child(name))
            storage.write_bytes(root.child(f"{DONE_DIR}/{marker.output_rel}@{marker.model_version}"),
                                json.dumps({"input_uri": body["input_uri"], "run_id": body["run_id"]}).encode())


def check_markers_name_their_own_inputs(tree: Tree) -> None:
    """Every output is described by exactly one marker, and that marker's body names an input that
    maps to that output name (never another input's)."""
    files = tree.output_files()
    outputs = {name for name in files if not name.startswith("_ugpnet/") and not name.startswith("_intermediate/")}
    markers = {}
    for name, data in files.items():
        marker = parse_marker(name)
        if marker is not None:
            assert marker.output_rel not in markers, f"two markers for {marker.output_rel}"
            markers[marker.output_rel] = json.loads(data)["input_uri"]
    assert set(markers) == outputs
    for key, uri in markers.items():
        assert uri.rsplit("/", 1)[1].rsplit(".", 1)[0] == key.rsplit(".", 1)[0], (key, uri)


def run_case(case: Case, tree: Tree) -> None:
    tree.apply(case.first)
    if case.first:
        assert restore(tree, "one", case.flags_1) == 0
        if case.legacy_markers:
            make_legacy(tree)
    tree.apply(case.change)
    inputs_before, outputs_before = tree.input_bytes(), tree.output_files()

    assert restore(tree, "two", case.flags_2) == case.exit_status
    rows = rows_of(tree, "two")
    prefix = tree.input_root.rstrip("/")
    assert set(rows) == {f"{prefix}/{name}" for name in case.expect}
    outputs_after = tree.output_files()
    for name, (status, error) in case.expect.items():
        row = rows[f"{prefix}/{name}"]
        assert row["status"] == status, row
        if error:
            assert row["error"].startswith(error.format(**{"in": prefix})), row["error"]
            assert row["error_kind"] == "collision" and row["output_uri"] is None
        else:
            assert row["error"] is None and row["output_uri"] is not None
    made = {row["output_uri"] for row in rows.values() if row["status"] == "ok"}
    root = storage.resolve(tree.output_root)
    for name in set(outputs_after) - set(outputs_before):  # new files: only the outputs of ok rows
        assert name.startswith(("_ugpnet/", "_intermediate/")) or root.child(name).uri in made, name
    if not made:  # nothing was (re)done: every output is byte for byte as before
        assert {k: v for k, v in outputs_after.items() if not k.startswith("_ugpnet/")} == \
               {k: v for k, v in outputs_before.items() if not k.startswith("_ugpnet/")}
    assert tree.input_bytes() == inputs_before
    check_markers_name_their_own_inputs(tree)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_collision_matrix_local(case, tmp_path, ray_session):
    run_case(case, Tree(str(tmp_path / "in"), str(tmp_path / "out"), tmp_path / "in"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", CASES[:2], ids=[case.name for case in CASES[:2]])
def test_collision_matrix_s3_output(case, tmp_path, s3_buckets, ray_session):
    """The same with outputs and markers on S3 (the moto server)."""
    run_case(case, Tree(str(tmp_path / "in"), "s3://outputs/restored", tmp_path / "in"))


@pytest.mark.timeout(400)
def test_the_archive_never_takes_over_another_inputs_output(tmp_path, ray_session):
    """Archive run 1 restores a.png; a.jpg appears. Run 2 plans a.jpg alone: it must neither delete
    a.png's marker nor overwrite a.png's output; a.jpg is committed as a collision error naming both,
    a.png stays ok, and the next run has nothing to redo."""
    from pipelines.archive.run import ArchiveConfig
    from pipelines.archive.run import run as archive_run
    from pipelines.archive.state import StateStore

    source, dest = tmp_path / "src", tmp_path / "dest"
    source.mkdir()
    (source / "a.png").write_bytes(A_PNG)
    config = ArchiveConfig(source=str(source), dest=str(dest), state=str(tmp_path / "state"), model=MODEL)
    store = StateStore(storage.resolve(str(tmp_path / "state")))
    assert archive_run(config).committed
    tree = Tree(str(source), str(dest), source)
    before = tree.output_files()

    (source / "a.jpg").write_bytes(A_JPG)
    inputs = tree.input_bytes()
    second = archive_run(config)
    assert (second.committed, second.new, second.selected, second.ok, second.errors) == (True, 1, 1, 0, 1)
    records = ("_ugpnet/manifest/", "_ugpnet/runs/")  # each run adds its own; nothing else may change
    assert {k: v for k, v in tree.output_files().items() if not k.startswith(records)} == \
           {k: v for k, v in before.items() if not k.startswith(records)}  # a.png's output and marker included
    assert tree.input_bytes() == inputs
    state = {row["key"]: row for row in store.iter_state(store.head())}
    assert (state["a.png"]["status"], state["a.png"]["output_uri"]) == ("ok", str(dest / "a.png"))
    assert (state["a.jpg"]["status"], state["a.jpg"]["error_kind"], state["a.jpg"]["output_uri"]) == \
           ("error", "collision", None)
    assert state["a.jpg"]["error"].startswith(f"collision: output 'a.png' is already the output of {source}/a.png")
    assert f"{source}/a.jpg is neither skipped nor written" in state["a.jpg"]["error"]
    check_markers_name_their_own_inputs(tree)
    assert archive_run(config).committed is False  # a collision is the input's own error: not retried



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
@pytest.mark.timeout(300)
def test_a_local_path_an_s3_manifest_may_not_name_is_the_inputs_fault(s3_buckets, tmp_path, ray_session, capsys):
    """Paths meet error kinds: the refused entry is one error row of kind `name` (the manifest's own
    fault), so a run whose other entries succeed exits 0 (it was kind `internal`: exit 3)."""
    client = s3_buckets.client()
    client.put_object(Bucket="inputs", Key="lists/ok.png", Body=photo(40, 32, fmt="PNG"))
    local = write(tmp_path / "private.png", photo(40, 32, seed=2, fmt="PNG"))
    client.put_object(Bucket="inputs", Key="lists/m.txt", Body=f"ok.png\n{local}\n".encode())
    status, err = run_cli(["restore", "--input", "s3://inputs/lists/m.txt", "--output", "s3://outputs/r",
                           "--model", MODEL, "--run-id", "policy", "--batch-size", "2"], capsys)
    assert status == 0, err
    rows = manifest_rows("s3://outputs/r/_ugpnet/manifest/policy")
    assert {uri: (row["status"], row["error_kind"]) for uri, row in rows.items()} == {
        "s3://inputs/lists/ok.png": ("ok", None), str(local): ("error", "name")}


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

