"""Checks of config values shared by every verb's config (restore, evaluate, archive, train):
each raises `ConfigError` naming the field, before any work is done.
"""

import math
from dataclasses import fields

from pipelines.common import storage


class ConfigError(ValueError):
    """A configuration value is wrong; raised before any work, naming the field."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"config field '{field_name}': {message}")
        self.field, self.reason = field_name, message


def fields_from_mapping(cls, values: dict, required: tuple[str, ...]) -> dict:
    """A config file's mapping as dataclass field values: keys may use `-` or `_`; unknown keys and
    missing required ones are ConfigErrors naming the key."""
    known = {f.name for f in fields(cls)}
    normalised = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ConfigError(str(key), f"unknown field; known fields: {', '.join(sorted(known))}")
        normalised[name] = value
    for name in required:
        if name not in normalised:
            raise ConfigError(name, "is required")
    return normalised


def check_choice(name, value, choices):
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")


def check_integer(name, value, minimum=None, maximum=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ConfigError(name, f"must be {bounds}, got {value}")


def check_number(name, value, minimum=None, maximum=None, exclusive=False):
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(name, f"must be a number, got {value!r}")
    if minimum is not None and (value < minimum or exclusive and value == minimum):
        raise ConfigError(name, f"must be {'>' if exclusive else '>='} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(name, f"must be <= {maximum}, got {value}")


def parse_int_tuple(name, value) -> tuple[int, ...]:
    """`2`, `"1,2,3"` or `[1, 2, 3]`; anything else (1.5, null, true, "2.5") is refused, naming the field."""
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = [value]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        parts = None
    if not parts or not all(_is_plain_int(part) for part in parts):
        raise ConfigError(name, f"must be an integer or comma-separated integers, got {value!r}")
    return tuple(int(str(part).strip()) for part in parts)


def _is_plain_int(part) -> bool:
    if isinstance(part, bool):
        return False
    return isinstance(part, int) or isinstance(part, str) and part.strip().isascii() and part.strip().isdigit()


def parse_extensions(value) -> tuple[str, ...]:
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, list | tuple) and all(isinstance(p, str) for p in value):
        parts = list(value)
    else:
        raise ConfigError("extensions", f"must be comma-separated file endings or a list of them, got {value!r}")
    cleaned = tuple("." + p.strip().lower().lstrip(".") for p in parts if p.strip())
    if not cleaned:
        raise ConfigError("extensions", "needs at least one file ending, e.g. jpg,png")
    return cleaned


def parse_bucket_names(name, value) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(name, f"must be comma-separated bucket names, got {value!r}")
    names = tuple(v.strip() for v in value)
    bad = [v for v in names if "/" in v or ":" in v or "@" in v]
    if bad:
        raise ConfigError(name, f"must be bare bucket names (no s3://, '/' or credentials), got {bad[0]!r}")
    return names


def plain_name(name: str, value) -> str:
    """A run id: one path segment, so it can name a folder under any root."""
    if not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\\" in value \
            or len(value) > 200 or storage.unsafe_key_reason(value):
        raise ConfigError(name, f"must be a plain name (no '/', '\\', '.', '..' or control characters), "
                                f"got {value!r}")
    return value
