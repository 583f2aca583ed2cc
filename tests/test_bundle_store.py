"""Bundles fetched from storage for the driver: one download per use, removed afterwards (issue 12:
a training stage used to download its start bundle six times and keep every copy in /tmp)."""

import pytest

import ugpnet
from pipelines.common import storage
from pipelines.common.bundle_store import fetched_bundle, upload_directory
from pipelines.common.models import bundle_payload

pytest_plugins = ["services"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return ugpnet.save(ugpnet.build("tiny_denoise", seed=0), tmp_path_factory.mktemp("bundle") / "b")


def test_a_remote_bundle_is_downloaded_once_and_removed_after_use(s3_buckets, bundle):
    upload_directory(bundle, storage.resolve("s3://outputs/runs/b"))
    with fetched_bundle("s3://outputs/runs/b") as local:
        assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in bundle.iterdir())
        payload = bundle_payload(local, source="s3://outputs/runs/b")
        assert payload["weights"] == (bundle / "model.safetensors").read_bytes()
        assert ugpnet.load(local).preset.name == "tiny_denoise"
    assert not local.exists()


def test_a_local_bundle_is_used_in_place_and_kept(bundle):
    with fetched_bundle(str(bundle)) as local:
        assert local == bundle
    assert (bundle / "model.safetensors").is_file()
