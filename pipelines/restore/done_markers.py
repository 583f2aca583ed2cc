"""Done-markers: which input made an output, with which model and settings.

    <output root>/_ugpnet/done/<output key>@<model version>@<source>.<settings>.<content>

written after the output, so its presence means the output holds exactly those bytes. The three tags
are 12 hex digits of sha256: of the input URI (which input owns the output), of the settings that
change the output bytes (see output_settings), and of the input's size and ETag or mtime as listed
(`unknown` when the input was not listed, e.g. a manifest entry). The marker's body is JSON naming
all of it in clear (input URI, size, ETag/mtime, model version, settings, run id).

Planning needs only one listing: a marker of another source for the same output key is a collision
(that output belongs to another input: neither skipped nor overwritten); a marker of the same source
with other tags is stale (the input or the settings changed: redo, then drop it). Markers written
before the tags existed (`<key>@<version>`) are read as `legacy`: their body names their input.
"""

import hashlib
import json
import re
from dataclasses import dataclass

DONE_DIR = "_ugpnet/done"
UNKNOWN = "unknown"
LEGACY = ""  # the source tag of a marker without tags
_TAG = re.compile(r"^([0-9a-f]{12})\.([0-9a-f]{12})\.([0-9a-f]{12}|unknown)$")


def _digest(text: str) -> str:
    # surrogateescape: a non-UTF-8 file name (decoded by Python with surrogates) still hashes
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def output_settings(*, fit: str, tile_overlap: int | None, ext: str, quality: int, save_intermediate: bool,
                    precision: str = "fp32", transport: str = "compact", strip_metadata: bool = False) -> dict:
    """Every restore setting that changes the bytes written for an input (the model version aside).
    Batch size, stage layout and actor counts do not (fused and split outputs are equal); quality
    matters only for lossy formats; precision does (bf16 differs from fp32 by a few 8-bit levels), and so
    may the transport (uint16 canvases of resampled inputs are within 1/131070 of float32's).
    strip_metadata is named only when set, so outputs done before it existed keep their markers (their
    pixels are what a run writes now; only their metadata is missing)."""
    settings = {"fit": fit, "tile_overlap": tile_overlap, "ext": ext, "save_intermediate": save_intermediate,
                "quality": quality if ext in ("jpg", "webp", "auto") else None, "precision": precision,
                "transport": transport}
    if strip_metadata:
        settings["strip_metadata"] = True
    return settings


def settings_tag(settings: dict) -> str:
    return _digest(json.dumps(settings, sort_keys=True))


def source_tag(input_uri: str) -> str:
    return _digest(input_uri)


def content_tag(size: int | None, etag: str | None, mtime_ns: int | None) -> str:
    if size is None:
        return UNKNOWN
    return _digest(f"{size}:{etag if etag is not None else mtime_ns}")


@dataclass(frozen=True)
class Marker:
    output_rel: str
    model_version: str
    source: str      # LEGACY for a marker without tags
    settings: str = ""
    content: str = ""

    @property
    def relative(self) -> str:
        """Path below the output root."""
        if self.source == LEGACY:
            return f"{DONE_DIR}/{self.output_rel}@{self.model_version}"
        return f"{DONE_DIR}/{self.output_rel}@{self.model_version}@{self.source}.{self.settings}.{self.content}"


def marker_for(output_rel: str, model_version: str, input_uri: str, settings: dict, *, size: int | None = None,
               etag: str | None = None, mtime_ns: int | None = None) -> Marker:
    return Marker(output_rel, model_version, source_tag(input_uri), settings_tag(settings),
                  content_tag(size, etag, mtime_ns))


def parse_marker(relative: str) -> Marker | None:
    """A Marker from a path below the output root, None when it is not a marker."""
    if not relative.startswith(DONE_DIR + "/"):
        return None
    rest, sep, last = relative[len(DONE_DIR) + 1:].rpartition("@")
    if not sep:
        return None
    tags = _TAG.match(last)
    if tags is None:  # `<key>@<version>`: a marker from before the tags
        return Marker(rest, last, LEGACY) if rest else None
    key, sep, version = rest.rpartition("@")
    return Marker(key, version, *tags.groups()) if sep and key else None


def marker_body(marker: Marker, *, input_uri: str, settings: dict, size: int | None, etag: str | None,
                mtime_ns: int | None) -> dict:
    """What a marker says in clear; the writer adds run_id, bytes_read and written_at."""
    return {"input_uri": input_uri, "input_size": size, "input_etag": etag, "input_mtime_ns": mtime_ns,
            "model_version": marker.model_version, "settings": settings}
