"""Where files live: local paths and `s3://` URIs, opened through pyarrow filesystems.

S3 settings follow the standard AWS variables. pyarrow ignores `AWS_ENDPOINT_URL`, so the endpoint
is read here (AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL) and passed as `endpoint_override`, scheme
included (an endpoint without a scheme would mean HTTPS). Credentials are never read or carried by
this module: each process (driver or Ray worker) lets the AWS SDK find them in its own environment,
profile or instance metadata, so no secret is pickled into a Ray task, a manifest or a log line.

What a worker needs to reopen a filesystem is a `StorageSpec` (no secrets, picklable); the
filesystem object itself is built once per process and cached.

Transient S3 errors (throttling, 5xx, dropped connections) are retried twice over: by the AWS SDK's
standard retry strategy inside pyarrow, and by `with_retries` around each whole read or write.
"""

import hashlib
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

from pyarrow import fs as pafs

T = TypeVar("T")

S3_SDK_MAX_ATTEMPTS = 5       # attempts per request inside the AWS SDK
# Attempts of a whole read/write on top of that. Through the fault proxy at 10 % faults, 4 attempts
# (back-off 0.25 → 1 s) lost one output in 200, twice in two runs: every attempt of that write ended in a
# dropped connection on CreateMultipartUpload (cause not isolated; the SDK does retry those requests).
# 10 attempts with back-off up to 4 s (about 24 s in all) lost none.
WHOLE_OPERATION_ATTEMPTS = 10
RETRY_BASE_DELAY_S = 0.25     # first back-off; doubles per attempt up to RETRY_MAX_DELAY_S
RETRY_MAX_DELAY_S = 4.0
S3_CONNECT_TIMEOUT_S = 10.0
S3_REQUEST_TIMEOUT_S = 60.0
MAX_SEGMENT_BYTES = 200       # longer path segments are shortened (most filesystems stop at 255)

# pyarrow reports S3 failures as OSError("... AWS Error <CODE> during <Op> operation: ..."). These codes
# (and HTTP 5xx/429) mean "try again"; anything else (ACCESS_DENIED, NO_SUCH_KEY, ...) will not get better.
_AWS_ERROR = re.compile(r"AWS Error ([A-Z_]+)")
_HTTP_STATUS = re.compile(r"HTTP (?:status|response code)[: ]*(\d{3})", re.IGNORECASE)
_TRANSIENT_AWS_CODES = {"SLOW_DOWN", "THROTTLING", "REQUEST_TIMEOUT", "INTERNAL_FAILURE", "SERVICE_UNAVAILABLE",
                        "NETWORK_CONNECTION", "REQUEST_EXPIRED"}
_TRANSIENT_WORDS = ("connection reset", "connection refused", "timed out", "broken pipe", "temporarily unavailable")


class StorageError(OSError):
    """A URI that cannot be used (bad scheme, credentials embedded in it, a key escaping its root)."""


@dataclass(frozen=True)
class StorageSpec:
    """How to open one kind of filesystem: no secrets, safe to pickle and to log."""

    scheme: str  # "local" or "s3"
    endpoint_override: str | None = None  # "http://127.0.0.1:9000"; None = AWS
    region: str | None = None

    def filesystem(self) -> pafs.FileSystem:
        return _filesystem(self)


@lru_cache(maxsize=8)
def _filesystem(spec: StorageSpec) -> pafs.FileSystem:
    if spec.scheme == "local":
        return pafs.LocalFileSystem()
    if spec.scheme == "s3":
        return pafs.S3FileSystem(
            endpoint_override=spec.endpoint_override, region=spec.region,
            connect_timeout=S3_CONNECT_TIMEOUT_S, request_timeout=S3_REQUEST_TIMEOUT_S,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_SDK_MAX_ATTEMPTS))
    raise StorageError(f"unknown storage scheme {spec.scheme!r}")


def s3_spec_from_env(environ: dict[str, str] | None = None) -> StorageSpec:
    """The S3 endpoint and region from the standard AWS variables (no credentials)."""
    env = os.environ if environ is None else environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    return StorageSpec("s3", endpoint_override=endpoint, region=region)


@dataclass(frozen=True)
class Location:
    """A file or directory: `spec` opens its filesystem, `path` is the path on it
    (an absolute local path, or `bucket/key` for S3, never with a trailing slash)."""

    spec: StorageSpec
    path: str

    @property
    def uri(self) -> str:
        return f"s3://{self.path}" if self.spec.scheme == "s3" else self.path

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self.spec.filesystem()

    def child(self, relative_key: str) -> "Location":
        """The location `relative_key` below this one; the key must already be safe
        (see `safe_relative_key`), and the result is checked to stay inside."""
        joined = posixpath.join(self.path, relative_key)
        if posixpath.normpath(joined) != joined or not joined.startswith(self.path.rstrip("/") + "/"):
            raise StorageError(f"key {relative_key!r} would leave {self.uri}")
        return Location(self.spec, joined)

    def contains(self, other: "Location") -> bool:
        return self.spec.scheme == other.spec.scheme and (
            other.path == self.path or other.path.startswith(self.path.rstrip("/") + "/"))


def resolve(uri: str, s3: StorageSpec | None = None) -> Location:
    """A Location for a local path (relative paths are made absolute and normalised) or an
    `s3://bucket/key` URI. S3 keys are opaque: they are kept byte for byte (only trailing `/` are
    dropped), and a key that pyarrow's S3 client would itself rewrite (empty, `.` or `..` segments:
    `in//x`, `in/a/../b` reads `in/b`, `b/../other/x` reaches another bucket) or that holds control
    characters is refused here rather than silently naming another object."""
    text = str(uri).strip()
    if not text:
        raise StorageError("empty path")
    if not is_utf8(text):  # pyarrow cannot name such a path at all
        raise StorageError(f"path {printable(text)!r} is not valid UTF-8")
    scheme, sep, rest = text.partition("://")
    if not sep:
        if text.startswith("file:"):
            text = text[len("file:"):]
        return Location(StorageSpec("local"), os.path.abspath(os.path.expanduser(text)))
    scheme = scheme.lower()
    if scheme == "file":
        return Location(StorageSpec("local"), os.path.abspath(rest))
    if scheme not in ("s3", "s3a"):
        raise StorageError(f"unsupported URI scheme {scheme!r} (use a local path or s3://bucket/prefix)")
    bucket, _, key = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        # pyarrow would accept s3://KEY:SECRET@bucket; refusing keeps secrets out of every record.
        raise StorageError("credentials or a port in an s3:// URI are not accepted; set AWS_ACCESS_KEY_ID / "
                           "AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL) in the environment instead")
    if not bucket:
        raise StorageError(f"s3 URI {text!r} has no bucket")
    key = key.rstrip("/")
    problem = unsafe_key_reason(key) if key else None
    if problem:
        raise StorageError(f"s3 key {printable(key)!r} {problem}; S3 clients would read another object")
    return Location(s3 or s3_spec_from_env(), f"{bucket}/{key}" if key else bucket)


def unsafe_key_reason(key: str) -> str | None:
    """Why a '/'-separated key cannot be read or mirrored as it is, or None when it can."""
    if not is_utf8(key):
        return "is not valid UTF-8"
    if _CONTROL.search(key):
        return "holds control characters"
    if key.startswith("/"):
        return "is absolute"
    segments = key.split("/")
    if "" in segments:
        return "has an empty segment ('//' or a trailing '/')"
    if "." in segments or ".." in segments:
        return "has a '.' or '..' segment"
    return None


def is_utf8(text: str) -> bool:
    """False for names that came from the OS with undecodable bytes (`a\\udcff.png`)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable(text: str) -> str:
    """A name fit for a manifest row or a message: undecodable bytes shown as `\\xff`."""
    return text if is_utf8(text) else text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def disjoint_roots(output: Location, output_name: str, inputs: dict[str, Location]) -> None:
    """Refuse an output root that is, contains or lies inside any input root (and so could receive or
    overwrite an input); `inputs` maps config field names to roots. Local roots are compared after
    resolving symlinks, S3 roots as bucket + prefix with a trailing `/`."""
    for name, source in inputs.items():
        if source.spec.scheme != output.spec.scheme:
            continue
        a, b = _comparable(output), _comparable(source)
        if a == b:
            raise StorageError(f"{output_name} {output.uri} is the same place as {name} {source.uri}: outputs "
                               f"would overwrite inputs")
        if b.startswith(a + "/") or a == "/":
            raise StorageError(f"{output_name} {output.uri} contains {name} {source.uri}: outputs could "
                               f"overwrite inputs")
        if a.startswith(b + "/") or b == "/":
            raise StorageError(f"{output_name} {output.uri} lies inside {name} {source.uri}: outputs would "
                               f"be read as inputs by later runs")


def _comparable(location: Location) -> str:
    if location.spec.scheme == "local":
        return os.path.realpath(location.path)
    return location.path.rstrip("/")


def is_transient(error: BaseException) -> bool:
    """Worth retrying: throttling, 5xx, timeouts, dropped connections; never a missing or forbidden object."""
    if isinstance(error, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(error, TimeoutError | ConnectionError):
        return True
    message = str(error)
    status = _HTTP_STATUS.search(message)
    if status and (status[1] == "429" or status[1].startswith("5")):
        return True
    code = _AWS_ERROR.search(message)
    if code:
        return code[1] in _TRANSIENT_AWS_CODES
    return any(word in message.lower() for word in _TRANSIENT_WORDS)


def with_retries(operation: Callable[[], T], *, attempts: int = WHOLE_OPERATION_ATTEMPTS,
                 base_delay_s: float = RETRY_BASE_DELAY_S, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `operation`, retrying transient OSErrors with exponential back-off; others raise at once."""
    for attempt in range(attempts):
        try:
            return operation()
        except OSError as error:
            if attempt + 1 == attempts or not is_transient(error):
                raise
            sleep(min(base_delay_s * 2 ** attempt, RETRY_MAX_DELAY_S))
    raise AssertionError("unreachable")


def read_bytes(location: Location) -> bytes:
    def read() -> bytes:
        with location.filesystem.open_input_stream(location.path) as stream:
            return stream.read()
    return with_retries(read)


def write_bytes(location: Location, data: bytes) -> None:
    """Write a whole file. Local files appear atomically (temp file + rename), as S3 PUTs do,
    so a run killed mid-write never leaves a truncated output behind; file and folder are fsynced,
    so after a power cut the name holds the old bytes or the new ones, never an empty file."""
    filesystem = location.filesystem
    if location.spec.scheme == "local":
        os.makedirs(posixpath.dirname(location.path), exist_ok=True)
        durable_replace(write_durable_temp(location.path, data), location.path)
        return

    def put() -> None:
        with filesystem.open_output_stream(location.path) as stream:
            stream.write(data)
    with_retries(put)


def write_durable_temp(path: str, data: bytes) -> str:
    """`data` in a hidden temp file beside `path`, flushed to disk; returns the temp file's path."""
    parent = posixpath.dirname(path)
    temporary = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return temporary


def durable_replace(temporary: str, path: str) -> None:
    """Rename a flushed temp file over `path`, then fsync the folder so the rename itself survives."""
    try:
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    fsync_directory(posixpath.dirname(path))


def publish_local_folder(staging: Location, target: Location) -> None:
    """Move the finished files of a hidden local staging folder into `target`, one rename each, flushed
    to disk first (their writer did not), then drop the staging folder."""
    for name in sorted(os.listdir(staging.path)):
        path = posixpath.join(staging.path, name)
        fsync_file(path)
        os.rename(path, posixpath.join(target.path, name))
    fsync_directory(target.path)
    os.rmdir(staging.path)
    fsync_directory(target.path)


def fsync_file(path: str) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def delete_if_exists(location: Location) -> None:
    try:
        with_retries(lambda: location.filesystem.delete_file(location.path))
    except FileNotFoundError:
        pass


def file_info(location: Location) -> pafs.FileInfo:
    return with_retries(lambda: location.filesystem.get_file_info(location.path))


def list_files(location: Location) -> list[pafs.FileInfo]:
    """Every file below a directory (recursive); an empty list when the directory does not exist."""
    selector = pafs.FileSelector(location.path, recursive=True, allow_not_found=True)
    infos = with_retries(lambda: location.filesystem.get_file_info(selector))
    return [info for info in infos if info.type == pafs.FileType.File]


def relative_to(root: Location, path: str) -> str:
    prefix = root.path.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise StorageError(f"{path!r} is not below {root.uri}")
    return path[len(prefix):]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_relative_key(key: str) -> str:
    """A relative key that can only ever name something below an output root, or a StorageError.

    Backslashes count as separators. A key with empty, `.` or `..` segments, a leading `/`,
    control characters (NUL, newlines, ...) or bytes that are not UTF-8 is refused rather than
    rewritten: a rewrite would make two different inputs share one output (`a//b` and `a/b`).
    Segments longer than MAX_SEGMENT_BYTES are shortened with a hash of the original, so the
    mapping stays deterministic (re-runs find their earlier outputs) and distinct.
    """
    text = str(key).replace("\\", "/")
    problem = unsafe_key_reason(text) if text else "names no file"
    if problem:
        raise StorageError(f"key {printable(str(key))!r} {problem}")
    segments = []
    for segment in text.split("/"):
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            digest = hashlib.sha256(segment.encode("utf-8")).hexdigest()[:12]
            stem, ext = posixpath.splitext(segment)
            ext = ext if len(ext.encode("utf-8")) <= 16 else ""
            budget = MAX_SEGMENT_BYTES - len(digest) - 1 - len(ext.encode("utf-8"))
            stem = stem.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
            segment = f"{stem}~{digest}{ext}"
        segments.append(segment)
    return "/".join(segments)
