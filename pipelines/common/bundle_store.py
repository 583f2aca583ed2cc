"""Bundles (and other small directories) copied between local disk and storage (local or S3)."""

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipelines.common import storage
from ugpnet.checkpoint import CONFIG_FILE


def upload_directory(local: Path, target: storage.Location) -> None:
    """Copy every file; the config (CONFIG_FILE) last, so a bundle is complete once it is visible."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == CONFIG_FILE)
    for path in files:
        storage.write_bytes(target.child(path.relative_to(local).as_posix()), path.read_bytes())


def download_directory(source: storage.Location, local: Path) -> Path:
    for info in storage.list_files(source):
        relative = storage.relative_to(source, info.path)
        destination = local / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(storage.read_bytes(storage.Location(source.spec, info.path)))
    return local


def bundle_exists(location: storage.Location) -> bool:
    from pyarrow import fs as pafs

    return storage.file_info(location.child(CONFIG_FILE)).type == pafs.FileType.File


@contextlib.contextmanager
def fetched_bundle(uri: str) -> Iterator[Path]:
    """A local folder holding the bundle at `uri` while the block runs: the folder itself when it is
    local, else one download into a temporary folder that is removed when the block ends (a stage
    used to download its start bundle up to six times and leave every copy behind)."""
    location = storage.resolve(uri)
    if location.spec.scheme == "local":
        yield Path(location.path)
        return
    with tempfile.TemporaryDirectory(prefix="ugpnet-bundle-") as folder:
        yield download_directory(location, Path(folder))
