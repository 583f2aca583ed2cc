"""Why an input ended as an error: the manifest's `error_kind` column.

Input kinds are the input's own fault and stay so until the object changes (a corrupt file, a name
that cannot be mirrored, two inputs wanting one output, an object that is not there). Every other
kind is the fault of the store, the network or this system (access denied, throttling, a 5xx, the
model, the output store): the same input may well succeed on the next try, so an archive run retries
those, and a restore run whose errors are all of those kinds fails (exit non-zero) instead of
reporting success.
"""

import re

MISSING, CORRUPT, SIZE, NAME, COLLISION = "missing", "corrupt", "size", "name", "collision"
ACCESS_DENIED, THROTTLED, NETWORK, SERVER, STORAGE = "access_denied", "throttled", "network", "server", "storage"
MODEL, ENCODE, WRITE, INTERNAL = "model", "encode", "write", "internal"
FENCED = "fenced"  # not done: the run lost the lease it worked under (pipelines/restore/fence.py)
INPUT_KINDS = frozenset({MISSING, CORRUPT, SIZE, NAME, COLLISION})  # SIZE: refused by the fit or pixel limits

# pyarrow reports S3 failures as OSError("AWS Error <CODE> during <Op> operation: ...").
_AWS_ERROR = re.compile(r"AWS Error ([A-Z_]+)")
_HTTP_STATUS = re.compile(r"HTTP (?:status|response code)[: ]*(\d{3})", re.IGNORECASE)
_AWS_KINDS = {
    "NO_SUCH_KEY": MISSING, "RESOURCE_NOT_FOUND": MISSING, "NO_SUCH_BUCKET": MISSING,
    "ACCESS_DENIED": ACCESS_DENIED, "INVALID_ACCESS_KEY_ID": ACCESS_DENIED,
    "SIGNATURE_DOES_NOT_MATCH": ACCESS_DENIED, "MISSING_AUTHENTICATION_TOKEN": ACCESS_DENIED,
    "EXPIRED_TOKEN": ACCESS_DENIED, "INVALID_CLIENT_TOKEN_ID": ACCESS_DENIED,
    "SLOW_DOWN": THROTTLED, "THROTTLING": THROTTLED, "REQUEST_LIMIT_EXCEEDED": THROTTLED,
    "NETWORK_CONNECTION": NETWORK, "REQUEST_TIMEOUT": NETWORK, "REQUEST_EXPIRED": NETWORK,
    "INTERNAL_FAILURE": SERVER, "SERVICE_UNAVAILABLE": SERVER,
}
_NETWORK_WORDS = ("connection reset", "connection refused", "timed out", "broken pipe", "could not connect",
                  "couldn't connect", "name resolution", "temporarily unavailable")


def classify_read_error(err: BaseException) -> str:
    """The kind of a failed read of an input (local file or S3 object)."""
    if isinstance(err, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return MISSING
    if isinstance(err, PermissionError):
        return ACCESS_DENIED
    if isinstance(err, TimeoutError | ConnectionError):
        return NETWORK
    message = str(err)
    code = _AWS_ERROR.search(message)
    if code and code[1] in _AWS_KINDS:
        return _AWS_KINDS[code[1]]
    status = _HTTP_STATUS.search(message)
    if status:
        number = int(status[1])
        if number in (401, 403):
            return ACCESS_DENIED
        if number == 404:
            return MISSING
        if number in (429, 503):
            return THROTTLED
        if number >= 500:
            return SERVER
    if any(word in message.lower() for word in _NETWORK_WORDS):
        return NETWORK
    return STORAGE


def kind_of_stage(error_text: str) -> str:
    """The kind of an error row that no stage classified, from its `<stage>: <reason>` text."""
    stage = error_text.split(":", 1)[0].strip()
    if stage.startswith("model"):
        return MODEL
    # "manifest": an entry the manifest policy refuses (a local path or another bucket named by a
    # manifest on S3) is that entry's own fault, like a name that cannot be used, until the manifest changes.
    return {"decode": CORRUPT, "fit": SIZE, "name": NAME, "manifest": NAME, "collision": COLLISION,
            "encode": ENCODE, "write": WRITE, "read": STORAGE, "fence": FENCED}.get(stage, INTERNAL)


def is_input_error(kind: str | None) -> bool:
    return kind in INPUT_KINDS


def error_text(err: BaseException) -> str:
    """An exception as one line of an error row: its message (or its type when it has none), at
    most 500 characters, so a manifest row stays a row whatever a library put in the message."""
    text = str(err).strip().replace("\n", " ") or type(err).__name__
    return text if len(text) <= 500 else text[:497] + "..."
