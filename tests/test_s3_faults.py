"""Real S3 faults, injected by a proxy in front of the moto server (tests/fault_proxy.py): 500, 503,
SlowDown, dropped and reset connections, lost answers. Restore (listing, reads, writes, markers,
manifest, summary) runs through it on a real local Ray (issue 10 point 13)."""

import json

import pyarrow.dataset as pads
import pytest
from fault_proxy import FaultProxy
from restore_samples import photo

import ugpnet
from pipelines import cli
from pipelines.common import storage

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
pytest_plugins = ["services"]

IMAGES = 200


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return str(ugpnet.save(ugpnet.build("tiny_denoise", seed=0), tmp_path_factory.mktemp("bundle") / "tiny"))


@pytest.fixture
def proxy(s3_buckets, monkeypatch):
    """The proxy in front of moto; this process's S3 endpoint (and so every Ray worker's) is the proxy."""
    with FaultProxy(s3_buckets.endpoint) as running:
        monkeypatch.setenv("AWS_ENDPOINT_URL", running.endpoint)
        yield running


def direct(moto_s3) -> storage.StorageSpec:
    """The moto server itself, bypassing the proxy: how the test checks what really got stored."""
    return storage.StorageSpec("s3", endpoint_override=moto_s3.endpoint, region="us-east-1")


def s3_keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def manifest_rows(uri: str, spec: storage.StorageSpec) -> list[dict]:
    location = storage.resolve(uri, spec)
    return pads.dataset(location.path, filesystem=location.filesystem, format="parquet").to_table().to_pylist()


@pytest.mark.timeout(900)
def test_restore_of_200_images_through_10_percent_transient_s3_faults(s3_buckets, proxy, bundle, capsys):
    client = s3_buckets.client()  # straight to moto: the inputs are put there without faults
    inputs = {f"s3://inputs/many/d{index % 5}/img{index:03d}.jpg" for index in range(IMAGES)}
    for index, uri in enumerate(sorted(inputs)):
        client.put_object(Bucket="inputs", Key=uri.removeprefix("s3://inputs/"), Body=photo(24, 24, seed=index))

    proxy.fail_fraction(0.10, seed=10)
    status = cli.main(["restore", "--input", "s3://inputs/many/", "--output", "s3://outputs/res/", "--model", bundle,
                       "--batch-size", "8", "--run-id", "faults"])
    out = capsys.readouterr().out
    proxy.heal()
    print(f"fault proxy: {proxy.requests} requests, faults injected {dict(proxy.injected)}")  # shown by -rP

    rows = manifest_rows("s3://outputs/res/_ugpnet/manifest/faults", direct(s3_buckets))
    failed = [(row["input_uri"], row["error"]) for row in rows if row["status"] != "ok"]
    assert status == 0, (failed, out[-2000:])
    assert f"restore faults: {IMAGES} ok, 0 error, 0 skipped of {IMAGES} inputs" in out
    # Faults really happened, of every transient kind, on reads, writes and listings alike.
    assert sum(proxy.injected.values()) >= 0.05 * proxy.requests and proxy.requests > 3 * IMAGES, proxy.injected
    assert set(proxy.injected) == {"500", "503", "slowdown", "drop", "reset", "lost"}, proxy.injected
    assert {method for method, _, fault in proxy.log if fault} >= {"GET", "PUT", "HEAD"}

    assert len(rows) == IMAGES and {row["input_uri"] for row in rows} == inputs  # complete, no duplicates
    assert [row for row in rows if row["status"] != "ok"] == []
    outputs = {row["output_uri"] for row in rows}
    stored = {f"s3://outputs/{key}" for key in s3_keys(client, "outputs", "res/") if "/_ugpnet/" not in key}
    assert len(outputs) == IMAGES and stored == outputs
    assert len(s3_keys(client, "outputs", "res/_ugpnet/done/")) == IMAGES
    summary = json.loads(client.get_object(Bucket="outputs", Key="res/_ugpnet/runs/faults.json")["Body"].read())
    assert (summary["ok"], summary["errors"], summary["exit_status"]) == (IMAGES, 0, 0)


@pytest.mark.timeout(600)
def test_restore_with_s3_refusing_everything_fails_clearly(s3_buckets, proxy, bundle, capsys):
    client = s3_buckets.client()
    for index in range(3):
        client.put_object(Bucket="inputs", Key=f"few/img{index}.jpg", Body=photo(24, 24, seed=index))

    proxy.refuse_everything()
    status = cli.main(["restore", "--input", "s3://inputs/few/", "--output", "s3://outputs/res/", "--model", bundle,
                       "--run-id", "refused"])
    captured = capsys.readouterr()

    assert status != 0
    assert "cannot reach s3://outputs/res" in captured.err and "NETWORK_CONNECTION" in captured.err, captured.err
    assert proxy.injected["refused"] >= 2  # retried before giving up
    assert s3_keys(client, "outputs") == []  # nothing was written


# ---------------------------------------------------------------- archive: listing, lease, commit

def touches(*names: str):
    """A matcher for requests whose path names one of the state store's files."""
    return lambda method, path: any(name in path for name in names)


@pytest.mark.timeout(900)
def test_two_archive_runs_through_s3_faults_on_listing_lease_and_commit(s3_buckets, proxy):
    from pipelines.archive.run import ArchiveConfig, run
    from pipelines.archive.state import StateStore

    client = s3_buckets.client()
    for index in range(12):
        client.put_object(Bucket="inputs", Key=f"archive/a/{index:02d}.jpg", Body=photo(24, 24, seed=index))
    config = ArchiveConfig(source="s3://inputs/archive", dest="s3://outputs/restored", state="s3://outputs/state",
                           model="preset:tiny_denoise")

    # The first requests on the lease and on HEAD.json fail (one of them after taking effect), the
    # rest of the traffic at 10 %: listing, restore, state files and the commit all see faults.
    proxy.fail_fraction(0.10, seed=20)
    proxy.fail_next(3, "lost", match=touches("lease.json", "HEAD.json"))
    first = run(config)
    for index in range(12, 16):
        client.put_object(Bucket="inputs", Key=f"archive/b/{index:02d}.jpg", Body=photo(24, 24, seed=index))
    proxy.fail_next(3, "slowdown", match=touches("lease.json", "HEAD.json", "commits/"))
    second = run(config)
    proxy.heal()

    state_requests = [fault for _, path, fault in proxy.log if "lease.json" in path or "HEAD.json" in path]
    assert state_requests.count("lost") >= 3 and state_requests.count("slowdown") >= 2, proxy.injected
    assert sum(proxy.injected.values()) >= 10, proxy.injected
    assert (first.committed, first.version, first.new, first.ok) == (True, 1, 12, 12)
    assert (second.committed, second.version, second.new, second.unchanged, second.ok) == (True, 2, 4, 12, 4)
    store = StateStore(storage.resolve("s3://outputs/state", direct(s3_buckets)))
    assert store.head()["run_id"] == second.run_id and store.read_json("lease.json") is None
    assert [record["run_id"] for record in store.committed_chain()] == [first.run_id, second.run_id]
    committed = {row["key"]: row for row in store.iter_state(store.head())}
    assert sorted(committed) == sorted([f"a/{i:02d}.jpg" for i in range(12)] + [f"b/{i:02d}.jpg" for i in
                                                                                 range(12, 16)])
    stored = {key for key in s3_keys(client, "outputs", "restored/") if "/_ugpnet/" not in key}
    assert {row["output_uri"] for row in committed.values()} == {f"s3://outputs/{key}" for key in stored}
    assert {row["status"] for row in committed.values()} == {"ok"}


# ---------------------------------------------------------------- training: checkpoints and bundles on S3

@pytest.mark.timeout(900)
def test_training_checkpoints_and_bundles_through_s3_faults(s3_buckets, proxy, tmp_path, capsys):
    from train_helpers import photo_folder

    photos = photo_folder(tmp_path / "photos")  # the data stays local: the checkpoints are under test
    proxy.fail_fraction(0.10, seed=30)
    proxy.fail_next(2, "lost", match=touches("faults-restoration/"))  # Ray Train's checkpoint uploads
    code = cli.main(["train", "--preset", "tiny_denoise", "--data", str(photos), "--run-name", "faults",
                     "--storage", "s3://outputs/runs", "--workers", "1", "--cpus-per-worker", "0.5",
                     "--stage", "restoration", "--steps", "4", "--batch-size", "2", "--no-register",
                     "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                     "--set", "hyperparams.restoration.validation_interval=2",
                     "--set", "hyperparams.restoration.checkpoint_interval=2"])
    out = capsys.readouterr().out
    proxy.heal()

    assert code == 0, out[-3000:]
    faulted = [path for _, path, fault in proxy.log if fault]
    assert sum("faults-restoration/" in path for path in faulted) >= 2, proxy.injected
    assert any("/bundles/" in path for _, path, _ in proxy.log)  # bundles went through the proxy too
    keys = s3_keys(s3_buckets.client(), "outputs", "runs/")
    checkpoints = {key.split("/")[2] for key in keys if key.startswith("runs/faults-restoration/checkpoint_")}
    assert len(checkpoints) >= 1, keys
    bundle = storage.resolve("s3://outputs/runs/faults/bundles/restoration", direct(s3_buckets))
    local = tmp_path / "bundle"
    local.mkdir()
    for name in ("model.safetensors", "ugpnet.json"):
        (local / name).write_bytes(storage.read_bytes(bundle.child(name)))
    assert ugpnet.load(local).bundle_config["provenance"]["stage_restoration"]["steps"] == 4
