"""Compare-and-swap on one small file: create it only if absent, replace or delete it only if unchanged.

The archive's lease and its commit pointer need this; a plain PUT or rename lets two runs both win.

- S3: PUT with `If-None-Match: *` (create) or `If-Match: <etag>` (replace), DELETE with `If-Match`,
  through botocore: pyarrow's S3 filesystem can send neither header.
- Local: every change happens under an exclusive `flock` on a lock file beside the target (released by
  the kernel when a process dies), comparing the current content's digest before a durable rename;
  a create links the finished temp file into place, which fails if the name exists (as O_EXCL would).

Each read also reports the object's age by the store's own clock (S3: the response's `Date` header minus
the object's `LastModified`, both stamped by the server; local: this host's clock minus the file's
mtime), so an expiry never compares two hosts' clocks. S3 stamps both at whole seconds: ages are ±1 s.

A conditional PUT whose response was lost is retried by the SDK and then fails its own precondition;
so on a refusal the object is read back, and content equal to ours (writers put a unique token or
nonce in it) counts as our success.
"""

import fcntl
import hashlib
import os
import posixpath
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import lru_cache

from pipelines.common import storage

S3_CONNECT_TIMEOUT_S = 5.0   # short: a lease renewal must not hang for a good part of its TTL
S3_READ_TIMEOUT_S = 10.0
S3_ATTEMPTS = 3
_REFUSED = {"PreconditionFailed", "ConditionalRequestConflict"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


class PreconditionFailed(RuntimeError):
    """The file exists (create) or changed since it was read (replace, delete)."""


@dataclass(frozen=True)
class Snapshot:
    data: bytes
    etag: str      # S3 ETag without quotes; locally a digest of the content
    age_s: float   # seconds since the last write, by the store's clock


def read(location: storage.Location) -> Snapshot | None:
    if location.spec.scheme == "local":
        return _read_local(location.path)
    return _read_s3(location)


def create(location: storage.Location, data: bytes) -> str:
    """Write `data` only if nothing is there; returns the new etag. PreconditionFailed otherwise."""
    if location.spec.scheme == "local":
        return _create_local(location.path, data)
    return _put_s3(location, data, IfNoneMatch="*")


def replace(location: storage.Location, data: bytes, etag: str) -> str:
    """Overwrite only if the current etag is `etag`; returns the new etag. PreconditionFailed otherwise."""
    if location.spec.scheme == "local":
        return _replace_local(location.path, data, etag)
    return _put_s3(location, data, IfMatch=f'"{etag}"')


def delete(location: storage.Location, etag: str) -> None:
    """Remove only if the current etag is `etag` (absent counts as done). PreconditionFailed otherwise."""
    if location.spec.scheme == "local":
        return _delete_local(location.path, etag)
    return _delete_s3(location, etag)


# ---------------------------------------------------------------- local files

def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _read_local(path: str) -> Snapshot | None:
    try:
        with open(path, "rb") as handle:
            data, modified = handle.read(), os.fstat(handle.fileno()).st_mtime
    except FileNotFoundError:
        return None
    return Snapshot(data, _digest(data), time.time() - modified)


class _Locked:
    """An exclusive flock on `.<name>.lock` beside `path`, for one compare-and-change."""

    def __init__(self, path: str):
        self.lock_path = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.lock")

    def __enter__(self):
        os.makedirs(posixpath.dirname(self.lock_path), exist_ok=True)
        self.fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing drops the lock


def _create_local(path: str, data: bytes) -> str:
    with _Locked(path):
        temporary = storage.write_durable_temp(path, data)
        try:
            os.link(temporary, path)  # fails with FileExistsError if the name exists
        except FileExistsError as err:
            raise PreconditionFailed(f"{path} already exists") from err
        finally:
            os.remove(temporary)
        storage.fsync_directory(posixpath.dirname(path))
    return _digest(data)


def _replace_local(path: str, data: bytes, etag: str) -> str:
    with _Locked(path):
        current = _read_local(path)
        if current is None or current.etag != etag:
            raise PreconditionFailed(f"{path} changed since it was read")
        storage.durable_replace(storage.write_durable_temp(path, data), path)
    return _digest(data)


def _delete_local(path: str, etag: str) -> None:
    with _Locked(path):
        current = _read_local(path)
        if current is None:
            return
        if current.etag != etag:
            raise PreconditionFailed(f"{path} changed since it was read")
        os.remove(path)
        storage.fsync_directory(posixpath.dirname(path))


# ---------------------------------------------------------------- S3

@lru_cache(maxsize=8)
def _client(spec: storage.StorageSpec):
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3", endpoint_url=spec.endpoint_override, region_name=spec.region,
        config=Config(retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"},
                      connect_timeout=S3_CONNECT_TIMEOUT_S, read_timeout=S3_READ_TIMEOUT_S))


def _call(location: storage.Location, operation: str, **params):
    """One botocore call; transport failures become ConnectionError (an OSError callers retry)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = location.path.partition("/")
    try:
        return getattr(_client(location.spec), operation)(Bucket=bucket, Key=key, **params)
    except ClientError:
        raise
    except BotoCoreError as err:
        raise ConnectionError(f"{operation} s3://{location.path}: {err}") from err


def _code(error) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _failure(action: str, location: storage.Location, error) -> OSError:
    """An OSError whose text storage.is_transient classifies (it reads the HTTP status)."""
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return OSError(f"{action} s3://{location.path}: HTTP status {status}: {error}")


def _read_s3(location: storage.Location) -> Snapshot | None:
    from botocore.exceptions import BotoCoreError, ClientError

    for attempt in range(S3_ATTEMPTS):
        try:
            response = _call(location, "get_object")
        except ClientError as err:
            if _code(err) in _MISSING:
                return None
            raise _failure("reading", location, err) from err
        try:
            data = response["Body"].read()  # botocore checks the length against Content-Length
            break
        except BotoCoreError as err:  # a body cut short: read the object again
            if attempt + 1 == S3_ATTEMPTS:
                raise ConnectionError(f"reading s3://{location.path}: {err}") from err
    server_now = parsedate_to_datetime(response["ResponseMetadata"]["HTTPHeaders"]["date"])
    age_s = (server_now - response["LastModified"]).total_seconds()
    return Snapshot(data, response["ETag"].strip('"'), age_s)


def _put_s3(location: storage.Location, data: bytes, **condition) -> str:
    from botocore.exceptions import ClientError

    try:
        return _call(location, "put_object", Body=data, **condition)["ETag"].strip('"')
    except ClientError as err:
        if _code(err) not in _REFUSED:
            raise _failure("writing", location, err) from err
        current = _read_s3(location)
        if current is not None and current.data == data:  # our own write, whose response was lost
            return current.etag
        raise PreconditionFailed(f"s3://{location.path} exists or changed since it was read") from err


def _delete_s3(location: storage.Location, etag: str) -> None:
    from botocore.exceptions import ClientError

    try:
        _call(location, "delete_object", IfMatch=f'"{etag}"')
    except ClientError as err:
        if _code(err) in _MISSING:
            return
        if _code(err) not in _REFUSED:
            raise _failure("deleting", location, err) from err
        if _read_s3(location) is not None:  # absent: an earlier attempt of ours deleted it
            raise PreconditionFailed(f"s3://{location.path} changed since it was read") from err

