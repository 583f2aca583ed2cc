"""What is in the archive now, and how it differs from the committed state: a streamed listing of the
source in key order, merged against the key-sorted state file in one pass.

Memory stays bounded however many keys there are: S3 is listed a page (1,000 keys) at a time with
ListObjectsV2, which returns keys in UTF-8 byte order; a local folder is walked so that it yields the
same order (a directory sorts as `name/`); the state is read a row group at a time. Python compares
strings by code point, which for UTF-8 is the same order as bytes, so a merge join needs no sort.

An object is *changed* when its size differs, or its ETag differs (S3), or, where there is no ETag
(local files), its modification time differs. Re-uploading identical bytes to S3 keeps the ETag and
so is not a change.
"""

import os
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC
from typing import NamedTuple

from pipelines.common import storage

S3_PAGE_SIZE = 1000  # the ListObjectsV2 maximum


class ListingError(RuntimeError):
    """The source cannot be listed in key order (or at all)."""


class Entry(NamedTuple):
    key: str               # relative to the source root, '/'-separated
    size: int              # bytes
    etag: str | None       # S3 ETag without quotes; None for local files
    mtime_ns: int | None   # modification time, ns since the epoch


def list_source(source: storage.Location, *, extensions: tuple[str, ...],
                exclude: tuple[storage.Location, ...] = ()) -> Iterator[Entry]:
    """Every object below `source` whose name ends with one of `extensions`, in key order, streamed.
    Objects inside `exclude` (a destination or state store placed under the source) are skipped."""
    wanted = tuple(ext.lower() for ext in extensions)
    skipped = tuple(storage.relative_to(source, loc.path) + "/" for loc in exclude
                    if loc.spec.scheme == source.spec.scheme and source.contains(loc) and loc.path != source.path)
    entries = _list_s3(source) if source.spec.scheme == "s3" else _list_local(source.path)
    for entry in entries:
        if wanted and not entry.key.lower().endswith(wanted):
            continue
        if skipped and entry.key.startswith(skipped):
            continue
        yield entry


def _list_s3(source: storage.Location) -> Iterator[Entry]:
    import botocore.session
    from botocore.config import Config

    bucket, _, prefix = source.path.partition("/")
    prefix = prefix + "/" if prefix else ""
    # botocore, not pyarrow: pyarrow lists a whole prefix into memory before returning anything.
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=source.spec.endpoint_override, region_name=source.spec.region,
        config=Config(retries={"max_attempts": storage.S3_SDK_MAX_ATTEMPTS, "mode": "standard"}))
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": S3_PAGE_SIZE})
    try:
        for page in pages:
            for item in page.get("Contents", ()):
                key = item["Key"][len(prefix):]
                if not key or key.endswith("/"):  # the prefix itself, or a folder-marker object
                    continue
                modified = item["LastModified"].astimezone(UTC)
                yield Entry(key, int(item["Size"]), item["ETag"].strip('"'),
                            int(modified.timestamp()) * 1_000_000_000 + modified.microsecond * 1000)
    except client.exceptions.NoSuchBucket as err:
        raise ListingError(f"bucket s3://{bucket} does not exist") from err


def _list_local(root: str) -> Iterator[Entry]:
    if not os.path.isdir(root):
        raise ListingError(f"{root} is not a folder")
    yield from _walk(root, "")


def _walk(root: str, relative: str) -> Iterator[Entry]:
    """Files below root/relative in full-key order: a directory `a` holds keys `a/...`, which sort
    after a file `a.b` ('/' > '.'), so directories are ordered by `name + '/'`."""
    directory = os.path.join(root, relative) if relative else root
    with os.scandir(directory) as scan:
        children = []
        for item in scan:
            if not storage.is_utf8(item.name):
                # Such a key cannot be stored in the state (parquet strings are UTF-8) nor named in a plan:
                # said on every run until renamed, and never allowed to stop the run.
                print(f"ugpnet archive: skipping {storage.printable(os.path.join(directory, item.name))!r}: "
                      f"its name is not valid UTF-8; rename it to have it processed", file=sys.stderr)
                continue
            if item.is_dir(follow_symlinks=False):
                children.append((item.name + "/", item.name, True))
            elif item.is_file():
                children.append((item.name, item.name, False))
    children.sort()
    for _, name, is_dir in children:
        key = f"{relative}/{name}" if relative else name
        if is_dir:
            yield from _walk(root, key)
            continue
        try:
            info = os.stat(os.path.join(root, key))
        except FileNotFoundError:  # removed while listing: it simply is not there
            continue
        yield Entry(key, info.st_size, None, info.st_mtime_ns)


# ---------------------------------------------------------------- the diff

NEW, CHANGED, UNCHANGED, DELETED = "new", "changed", "unchanged", "deleted"


def is_changed(entry: Entry, committed: dict) -> bool:
    if entry.size != committed["size"]:
        return True
    if entry.etag is not None and committed.get("etag") is not None:
        return entry.etag != committed["etag"]
    return entry.mtime_ns != committed.get("mtime_ns")


def diff(listing: Iterable[Entry], state_rows: Iterable[dict]) -> Iterator[tuple[str, Entry | None, dict | None]]:
    """Merge a key-ordered listing with key-ordered state rows: yields (kind, entry, committed row),
    kind one of new / changed / unchanged (entry and row) / deleted (row only)."""
    rows = iter(state_rows)
    row = next(rows, None)
    previous = None
    for entry in listing:
        if previous is not None and entry.key <= previous:
            raise ListingError(f"the listing is not in key order ({previous!r} then {entry.key!r}); "
                               "this S3-compatible server does not sort ListObjectsV2 results")
        previous = entry.key
        while row is not None and row["key"] < entry.key:
            yield DELETED, None, row
            row = next(rows, None)
        if row is not None and row["key"] == entry.key:
            yield (CHANGED if is_changed(entry, row) else UNCHANGED), entry, row
            row = next(rows, None)
        else:
            yield NEW, entry, None
    while row is not None:
        yield DELETED, None, row
        row = next(rows, None)
