"""Errors that are not the input's fault (issue 10, point 8): classified in the manifest's
`error_kind`, a run made only of them fails, and the archive retries them on its next run while it
keeps an input's own error (a corrupt file) until the object changes.

AccessDenied is real: a bucket policy on the moto server denies GetObject on some keys."""

import json

import pyarrow.dataset as pads
import pytest
from restore_samples import photo

from pipelines import cli
from pipelines.archive.run import ArchiveConfig
from pipelines.archive.run import run as archive_run
from pipelines.archive.state import StateStore
from pipelines.common import storage
from pipelines.common.error_kinds import (
    ACCESS_DENIED,
    MISSING,
    NETWORK,
    SERVER,
    STORAGE,
    THROTTLED,
    classify_read_error,
    is_input_error,
    kind_of_stage,
)

pytest_plugins = ["services"]

MODEL = "preset:tiny_denoise"
CORRUPT = b"this is a shopping list, not a photo\n" * 4


def deny_get(client, bucket: str, prefix: str) -> None:
    statement = {"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
                 "Resource": f"arn:aws:s3:::{bucket}/{prefix}*"}
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))


def rows_of(manifest_uri: str) -> dict[str, dict]:
    location = storage.resolve(manifest_uri)
    table = pads.dataset(location.path, filesystem=location.filesystem, format="parquet").to_table()
    return {row["input_uri"]: row for row in table.to_pylist()}


def read_error(location: storage.Location) -> OSError:
    with pytest.raises(OSError) as caught:
        storage.read_bytes(location)
    return caught.value


def test_read_errors_are_classified_from_real_failures(s3_buckets, tmp_path):
    client = s3_buckets.client()
    client.put_object(Bucket="inputs", Key="locked/a.jpg", Body=b"x")
    deny_get(client, "inputs", "locked/")
    assert classify_read_error(read_error(storage.resolve("s3://inputs/locked/a.jpg"))) == ACCESS_DENIED
    assert classify_read_error(read_error(storage.resolve("s3://inputs/none/a.jpg"))) == MISSING
    assert classify_read_error(read_error(storage.resolve(str(tmp_path / "none.jpg")))) == MISSING
    # What pyarrow says for the store's and the network's faults (AWS SDK codes, HTTP statuses).
    for message, kind in (("AWS Error SLOW_DOWN during GetObject operation: Please reduce", THROTTLED),
                          ("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 7", NETWORK),
                          ("AWS Error UNKNOWN (HTTP status 503) during GetObject operation", THROTTLED),
                          ("AWS Error INTERNAL_FAILURE during GetObject operation: Failed to flush", SERVER),
                          ("AWS Error UNKNOWN (HTTP status 403) during GetObject operation", ACCESS_DENIED),
                          ("something else went wrong", STORAGE)):
        assert classify_read_error(OSError(message)) == kind, message
    # Rows no stage classified get their kind from the stage that failed them.
    assert [kind_of_stage(text) for text in ("model (fused): out of memory", "decode: truncated PNG", "fit: 30x20",
                                             "write: disk full", "memory: needs 9 GiB",
                                             "manifest: a manifest on S3 may name only S3 objects")] == \
           ["model", "corrupt", "size", "write", "internal", "name"]
    assert [is_input_error(kind) for kind in ("corrupt", "collision", "missing", ACCESS_DENIED, "model", None)] == \
           [True, True, True, False, False, False]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_run_whose_every_read_is_denied_fails(s3_buckets, ray_session, tmp_path, capsys):
    client = s3_buckets.client()
    for index in range(3):
        client.put_object(Bucket="inputs", Key=f"denied/{index}.jpg", Body=photo(20, 16, seed=index))
    deny_get(client, "inputs", "denied/")
    status = cli.main(["restore", "--input", "s3://inputs/denied/", "--output", "s3://outputs/r", "--model", MODEL,
                       "--run-id", "denied"])
    assert status == 3  # was 0: 3 errors of 3 is not above --max-error-rate 1.0
    assert "every input (3) ended in an error" in capsys.readouterr().err
    rows = rows_of("s3://outputs/r/_ugpnet/manifest/denied")
    assert {row["error_kind"] for row in rows.values()} == {ACCESS_DENIED}
    assert all(row["status"] == "error" and row["error"].startswith("read: ") for row in rows.values())
    summary = json.loads(client.get_object(Bucket="outputs", Key="r/_ugpnet/runs/denied.json")["Body"].read())
    assert (summary["exit_status"], summary["error_kinds"]) == (3, {ACCESS_DENIED: 3})

    # Some inputs fine, the errors all the store's: still a failure. One corrupt file among fine
    # ones: the input's fault, the run did its job (exit 0).
    client.put_object(Bucket="inputs", Key="mixed/good.jpg", Body=photo(20, 16))
    client.put_object(Bucket="inputs", Key="mixed/locked/a.jpg", Body=photo(20, 16))
    deny_get(client, "inputs", "mixed/locked/")
    assert cli.main(["restore", "--input", "s3://inputs/mixed/", "--output", "s3://outputs/m", "--model", MODEL,
                     "--run-id", "mixed"]) == 3
    assert "not from an input" in capsys.readouterr().err
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "good.png").write_bytes(photo(20, 16, fmt="PNG"))
    (tmp_path / "in" / "corrupt.png").write_bytes(CORRUPT)
    assert cli.main(["restore", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", MODEL,
                     "--run-id", "corrupt"]) == 0
    kinds = {uri.rsplit("/", 1)[1]: row["error_kind"] for uri, row in rows_of(
        str(tmp_path / "out/_ugpnet/manifest/corrupt")).items()}
    assert kinds == {"good.png": None, "corrupt.png": "corrupt"}


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_the_archive_retries_store_errors_and_keeps_input_errors(s3_buckets, ray_session):
    client = s3_buckets.client()
    client.put_object(Bucket="inputs", Key="archive/good.jpg", Body=photo(20, 16, seed=1))
    client.put_object(Bucket="inputs", Key="archive/corrupt.jpg", Body=CORRUPT)
    client.put_object(Bucket="inputs", Key="archive/locked/a.jpg", Body=photo(20, 16, seed=2))
    deny_get(client, "inputs", "archive/locked/")
    store = StateStore(storage.resolve("s3://outputs/state"))

    def config() -> ArchiveConfig:
        return ArchiveConfig(source="s3://inputs/archive", dest="s3://outputs/restored", state="s3://outputs/state",
                             model=MODEL)

    def state() -> dict[str, tuple]:
        return {row["key"]: (row["status"], row["error_kind"]) for row in store.iter_state(store.head())}

    first = archive_run(config())
    assert (first.committed, first.ok, first.errors) == (True, 1, 2)
    assert state() == {"good.jpg": ("ok", None), "corrupt.jpg": ("error", "corrupt"),
                       "locked/a.jpg": ("error", ACCESS_DENIED)}

    client.delete_bucket_policy(Bucket="inputs")  # access restored: the next run retries that object only
    second = archive_run(config())
    assert (second.committed, second.reprocess, second.selected, second.ok, second.errors) == (True, 1, 1, 1, 0)
    assert state() == {"good.jpg": ("ok", None), "corrupt.jpg": ("error", "corrupt"), "locked/a.jpg": ("ok", None)}
    third = archive_run(config())  # a corrupt file stays done-with-error until it changes
    assert (third.committed, third.selected) == (False, 0)
    client.put_object(Bucket="inputs", Key="archive/corrupt.jpg", Body=photo(20, 16, seed=3))
    fourth = archive_run(config())
    assert (fourth.committed, fourth.changed, fourth.ok) == (True, 1, 1)
    assert set(state().values()) == {("ok", None)}
