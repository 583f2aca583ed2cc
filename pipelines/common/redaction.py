"""Credentials out of every record: the one function that redacts URIs before they are logged.

A URI can carry a secret in two places: its authority (`https://user:token@host`,
`s3://KEY:SECRET@bucket`, `https://TOKEN@host`) and its query (`?X-Amz-Signature=…`, `?token=…`).
`redact` replaces both with `***` wherever they occur in a text, so it serves a single URI, an error
message quoting one, or a whole log line alike. Every MLflow param, tag and run name, every printed
config and every CLI error line goes through it (see `redact_values` for nested configs).
"""

import re
from typing import Any

REDACTED = "***"

# The authority's user info, right after `scheme://`: either `user:password@` (the password may hold
# a `/`, as AWS secret keys do) or a bare `token@` (no `/` or `:`, so a key like `b/photos@2x.png` or
# a `models:/name@alias` reference is left alone). Over-redacting a rare `host:port/path@x` is safe.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?:[^\s/@:]*:[^\s@]*|[^\s/@:]+)@")
# Query parameters whose values are signatures, tokens or keys (presigned S3 URLs, bearer links).
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&;](?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|sig|token|access_token|"
    r"api_key|apikey|key|secret|password|passwd|pwd|auth|credential|session)=)[^&#\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the credentials of every URI in it replaced by `***`."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", str(text))
    return _SECRET_QUERY.sub(lambda m: f"{m['name']}{REDACTED}", text)


def redact_values(data: Any) -> Any:
    """A copy of a nested config (dicts, lists, tuples) with every string redacted."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {key: redact_values(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return type(data)(redact_values(value) for value in data)
    return data
