"""What a restore run will do, decided on the driver before any pixel moves: the inputs (a folder, an
S3 prefix, one file, or a manifest file listing URIs), the output key of each, and which inputs are
already done for this model version.

Re-runs: after writing an output, the writer stores a done-marker naming the input, the model
version and the settings that made it (see pipelines.restore.done_markers). One recursive listing of the
output root then says which outputs exist and for which input, model and settings, so a run that was
killed is re-run without redoing what finished, outputs made by another model version or other
settings are redone (and their markers removed), and an output that belongs to another input is
neither skipped nor overwritten: that input gets one error row naming both.
"""

import csv
import io
import json
import os
import posixpath
from dataclasses import dataclass

from pipelines.common import storage
from pipelines.common.error_kinds import COLLISION, NAME
from pipelines.restore.done_markers import LEGACY, Marker, marker_body, marker_for, parse_marker, source_tag
from pipelines.restore.stages import ERROR, INTERMEDIATE_DIR, PENDING, SKIPPED

MANIFEST_EXTENSIONS = (".txt", ".lst", ".list", ".csv", ".parquet")
URI_COLUMNS = ("input_uri", "uri", "path", "url", "input")
KEY_COLUMNS = ("key", "relative_path", "output_key")
RESERVED_TOP_LEVEL = ("_ugpnet", INTERMEDIATE_DIR)


class InputError(ValueError):
    """The input cannot be listed: missing, empty manifest, unreadable manifest."""


@dataclass(frozen=True)
class InputItem:
    input_uri: str
    relative_key: str  # as listed or given (not yet made safe)
    error: str = ""    # set when the input is unusable as named: it becomes one error row, never read
    size: int | None = None      # as listed; None for manifest entries (not listed)
    etag: str | None = None
    mtime_ns: int | None = None


@dataclass(frozen=True)
class ManifestPolicy:
    """What a manifest read from S3 may name. By default only objects in its own bucket: a manifest is
    data, and letting it name local files would let whoever writes it make workers read them."""

    allow_local_paths: bool = False      # --allow-local-manifest-paths
    buckets: tuple[str, ...] = ()        # other buckets an S3 manifest may name


def list_inputs(source: storage.Location, *, extensions: tuple[str, ...], s3: storage.StorageSpec,
                exclude: storage.Location | None = None,
                policy: ManifestPolicy = ManifestPolicy()) -> tuple[list[InputItem], str]:
    """The inputs and what `source` was: 'directory', 'file' or 'manifest'."""
    info = storage.file_info(source)
    if info.type == storage.pafs.FileType.NotFound:
        raise InputError(f"{source.uri} does not exist")
    if info.type == storage.pafs.FileType.File:
        if source.path.lower().endswith(MANIFEST_EXTENSIONS):
            return read_manifest(source, s3, policy), "manifest"
        return [InputItem(source.uri, posixpath.basename(source.path), size=info.size, mtime_ns=info.mtime_ns)], "file"
    wanted = tuple(ext.lower() for ext in extensions)
    items = []
    for path, size, mtime_ns in _file_paths(source):
        location = storage.Location(source.spec, path)
        if exclude is not None and exclude.contains(location):
            continue
        if wanted and not path.lower().endswith(wanted):
            continue
        items.append(_listed_item(source, location, size, mtime_ns))
    return sorted(items, key=lambda item: item.input_uri), "directory"


def _file_paths(source: storage.Location) -> list[tuple[str, int | None, int | None]]:
    """Every file below a folder or prefix, with its size and mtime (ns) as listed. Local folders are
    walked with os.walk, which keeps names that are not UTF-8 (as surrogate escapes), where pyarrow's
    listing fails on the whole folder."""
    if source.spec.scheme != "local":
        return [(file.path, file.size, file.mtime_ns) for file in storage.list_files(source)]

    def unreadable(error: OSError) -> None:  # os.walk would skip the folder silently: its inputs lost
        raise error

    files = []
    for directory, _, names in os.walk(source.path, onerror=unreadable):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                stat = os.stat(path)
                files.append((path, stat.st_size, stat.st_mtime_ns))
    return files


def _listed_item(source: storage.Location, location: storage.Location, size: int | None,
                 mtime_ns: int | None) -> InputItem:
    relative = storage.relative_to(source, location.path)
    if not storage.is_utf8(location.path):
        shown = storage.printable(location.uri)
        return InputItem(shown, storage.printable(relative),
                         f"name: the file name {storage.printable(relative)!r} is not valid UTF-8; rename it")
    if location.spec.scheme == "s3":
        key = location.path.partition("/")[2]
        problem = storage.unsafe_key_reason(key)
        if problem:
            return InputItem(location.uri, relative, f"name: s3 key {key!r} {problem}: it cannot be read or "
                                                     f"mirrored as itself")
    return InputItem(location.uri, relative, size=size, mtime_ns=mtime_ns)


def read_manifest(manifest: storage.Location, s3: storage.StorageSpec,
                  policy: ManifestPolicy = ManifestPolicy()) -> list[InputItem]:
    """URIs from a .txt (one per line, `#` comments), .csv (a uri/path column, optional key column)
    or .parquet file. Relative entries are relative to the manifest's own directory. An entry that
    cannot be used (an unsafe key, a place the policy forbids) becomes an item with an error."""
    uris, keys, versions = _manifest_entries(manifest, storage.read_bytes(manifest))
    versions = versions or [{}] * len(uris)
    entries = [(uri, key, version) for uri, key, version in zip(uris, keys, versions, strict=True) if uri]
    if not entries:
        raise InputError(f"the manifest {manifest.uri} lists no inputs")
    located = [(_entry_location(manifest, uri, s3, policy), uri, key, version) for uri, key, version in entries]
    root = _common_directory([entry[0] for entry in located if isinstance(entry[0], storage.Location)])
    items = []
    for location, uri, key, version in located:
        if not isinstance(location, storage.Location):  # the reason it cannot be used
            items.append(InputItem(storage.printable(uri), "", location))
            continue
        relative = key if key not in (None, "") else _scheme_free(location)[len(root):].lstrip("/")
        items.append(InputItem(location.uri, str(relative), **version))
    return items


def _manifest_entries(manifest: storage.Location, data: bytes) -> tuple[list[str], list, list[dict] | None]:
    """URIs, keys and (parquet only) per entry the size/etag/mtime_ns as listed, when the manifest carries them."""
    suffix = posixpath.splitext(manifest.path.lower())[1]
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data))
            if not table.column_names:
                raise InputError(f"the manifest {manifest.uri} has no columns (expected one of "
                                 f"{', '.join(URI_COLUMNS)})")
            uri_column = _pick(table.column_names, URI_COLUMNS) or table.column_names[0]
            key_column = _pick(table.column_names, KEY_COLUMNS)
            uris = [str(v) if v is not None else "" for v in table.column(uri_column).to_pylist()]
            keys = table.column(key_column).to_pylist() if key_column else [None] * len(uris)
            return uris, keys, _listed_versions(table)
        text = data.decode("utf-8-sig")
        if suffix == ".csv":
            rows = list(csv.reader(io.StringIO(text)))
            header = [h.strip().lower() for h in rows[0]] if rows else []
            uri_index = _index(header, URI_COLUMNS)
            key_index = _index(header, KEY_COLUMNS)
            body = rows[1:] if uri_index is not None else rows
            uri_index = uri_index or 0
            uris = [row[uri_index].strip() if len(row) > uri_index else "" for row in body]
            keys = [row[key_index] if key_index is not None and len(row) > key_index else None for row in body]
            return uris, keys, None
        lines = [line.strip() for line in text.splitlines()]
        uris = [line for line in lines if line and not line.startswith("#")]
        return uris, [None] * len(uris), None
    except InputError:
        raise
    except UnicodeDecodeError as err:  # its message would quote the manifest's bytes
        raise InputError(f"cannot read the manifest {manifest.uri}: not UTF-8 text (byte {err.start})") from None
    except (csv.Error, ValueError, OSError) as err:  # csv.Error: a field over csv.field_size_limit(), ...
        raise InputError(f"cannot read the manifest {manifest.uri}: {type(err).__name__}: {err}") from err


def _entry_location(manifest: storage.Location, uri: str, s3: storage.StorageSpec,
                    policy: ManifestPolicy) -> storage.Location | str:
    """Where one manifest entry points, or why it may not be used (as an error text)."""
    try:
        if "://" in uri or uri.startswith("/") or uri.startswith("file:"):
            location = storage.resolve(uri, s3)
        elif manifest.spec.scheme == "s3":  # relative to the manifest; S3 keys are joined, never normalised
            relative = uri[2:] if uri.startswith("./") else uri  # `./a.png` is a way of writing `a.png`
            location = storage.resolve(f"s3://{posixpath.dirname(manifest.path)}/{relative}", s3)
        else:
            location = storage.Location(manifest.spec, posixpath.normpath(
                posixpath.join(posixpath.dirname(manifest.path), uri)))
    except storage.StorageError as err:
        return f"name: {err}"
    if manifest.spec.scheme == "s3":
        if location.spec.scheme != "s3" and not policy.allow_local_paths:
            return ("manifest: a manifest on S3 may name only S3 objects, not local paths "
                    "(pass --allow-local-manifest-paths to allow them)")
        bucket = location.path.partition("/")[0]
        own = manifest.path.partition("/")[0]
        if location.spec.scheme == "s3" and bucket != own and bucket not in policy.buckets:
            return (f"manifest: a manifest in bucket {own!r} may name only its own bucket's objects, not "
                    f"bucket {bucket!r} (allow it with --manifest-buckets {bucket})")
    if not storage.is_utf8(location.path):
        return "name: the path is not valid UTF-8"
    return location


def _listed_versions(table) -> list[dict]:
    """size / etag / mtime_ns columns (an archive plan has them), so done-markers can tell a changed
    object from the one they describe; values of another type are ignored."""
    types = {"size": int, "etag": str, "mtime_ns": int}
    columns = {name: table.column(name).to_pylist() for name in types if name in table.column_names}
    versions = []
    for index in range(table.num_rows):
        version = {}
        for name, values in columns.items():
            value = values[index]
            version[name] = value if isinstance(value, types[name]) and not isinstance(value, bool) else None
        versions.append(version)
    return versions


def _pick(columns: list[str], wanted: tuple[str, ...]) -> str | None:
    lowered = {c.lower(): c for c in columns}
    return next((lowered[name] for name in wanted if name in lowered), None)


def _index(header: list[str], wanted: tuple[str, ...]) -> int | None:
    return next((header.index(name) for name in wanted if name in header), None)


def _scheme_free(location: storage.Location) -> str:
    return location.path if location.spec.scheme == "s3" else location.path.lstrip("/")


def _common_directory(locations: list[storage.Location]) -> str:
    """Longest directory shared by every entry (scheme-free paths), so outputs keep the structure
    below it; entries on different filesystems share none."""
    if len({location.spec.scheme for location in locations}) > 1:
        return ""
    directories = [posixpath.dirname(_scheme_free(location)) for location in locations]
    common = posixpath.commonpath(directories) if all(directories) else ""
    return common


# ---------------------------------------------------------------- output keys and re-runs

# What `--ext auto` writes for each input ending: its own format where the encoder writes it, PNG
# (lossless, like the BMP or GIF it replaces) elsewhere. The input's spelling is kept (.jpeg, .tif).
AUTO_EXTS = ("png", "jpg", "jpeg", "webp", "tif", "tiff")
AUTO_FALLBACK_EXT = "png"


def output_ext(relative_key: str, ext: str) -> str:
    """The output's extension: `ext`, or for `auto` the input's own (lower-cased) if writable."""
    if ext != "auto":
        return ext
    own = posixpath.splitext(relative_key)[1].lower().lstrip(".")
    return own if own in AUTO_EXTS else AUTO_FALLBACK_EXT


def output_key(relative_key: str, *, ext: str, suffix: str) -> str:
    """`a/b/c.jpg` → `a/b/c<suffix>.<ext>` (`auto`: see output_ext), made safe (storage.safe_relative_key)."""
    safe = storage.safe_relative_key(relative_key)
    directory, name = posixpath.split(safe)
    stem = posixpath.splitext(name)[0] if posixpath.splitext(name)[1] else name
    return storage.safe_relative_key(posixpath.join(directory, f"{stem}{suffix}.{output_ext(safe, ext)}"))


def existing_outputs(output_root: storage.Location) -> tuple[set[str], dict[str, list[Marker]]]:
    """(output keys present, {output key: its done-markers}) from one listing."""
    present, markers = set(), {}
    for file in storage.list_files(output_root):
        relative = storage.relative_to(output_root, file.path)
        marker = parse_marker(relative)
        if marker is not None:
            markers.setdefault(marker.output_rel, []).append(marker)
        elif not relative.startswith("_ugpnet/"):
            present.add(relative)
    return present, markers


def plan_rows(items: list[InputItem], *, output_root: storage.Location, ext: str, suffix: str, model_version: str,
              overwrite: bool, settings: dict) -> list[dict]:
    """One row per input: `pending`, `skipped` (done for this input, model and settings) or `error`
    (unusable name, or an output that another input owns or claims)."""
    present, markers = existing_outputs(output_root)
    bodies = _MarkerBodies(output_root)
    rows, claimed = [], {}
    for item in items:
        row = {"input_uri": item.input_uri, "output_rel": "", "status": PENDING, "error": "", "error_kind": "",
               "stale_markers": "[]", "marker": "", "marker_body": ""}
        rows.append(row)
        if item.error:  # unusable as named (see list_inputs): never read, never written
            row["status"], row["error"] = ERROR, item.error
            continue
        try:
            key = output_key(item.relative_key, ext=ext, suffix=suffix)
        except storage.StorageError as err:
            row["status"], row["error"], row["error_kind"] = ERROR, f"name: {err}", NAME
            continue
        if key.split("/", 1)[0] in RESERVED_TOP_LEVEL:
            row["status"], row["error"] = ERROR, f"name: output key {key!r} is inside a reserved directory"
            row["error_kind"] = NAME
            continue
        found = markers.get(key, [])
        other = _other_owner(found, item.input_uri, bodies)
        if other is not None:  # the output is another input's: redoing or skipping would misattribute it
            row["status"], row["error_kind"] = ERROR, COLLISION
            row["error"] = (f"collision: output {key!r} is already the output of {other} (done-marker "
                            f"{_DONE_HINT}); {item.input_uri} is neither skipped nor written")
            continue
        if key in claimed:
            row["status"], row["error_kind"] = ERROR, COLLISION
            row["error"] = (f"collision: output {key!r} is already the output of {claimed[key]} in this run; "
                            f"{item.input_uri} is not written")
            continue
        claimed[key] = item.input_uri
        listed = dict(size=item.size, etag=item.etag, mtime_ns=item.mtime_ns)
        marker = marker_for(key, model_version, item.input_uri, settings, **listed)
        row["output_rel"], row["marker"] = key, marker.relative
        row["marker_body"] = json.dumps(marker_body(marker, input_uri=item.input_uri, settings=settings, **listed))
        if not overwrite and marker in found and key in present:
            row["status"] = SKIPPED
            continue
        row["stale_markers"] = json.dumps(sorted(m.relative for m in found if m != marker))
    return rows


_DONE_HINT = "under _ugpnet/done/; delete that output and its marker to give the name to another input"


def _other_owner(found: list[Marker], input_uri: str, bodies: "_MarkerBodies") -> str | None:
    """The input that owns an output through one of its markers, when that is not `input_uri`."""
    mine = source_tag(input_uri)
    for marker in found:
        if marker.source == mine:
            continue
        owner = bodies.input_uri(marker)
        if marker.source == LEGACY and owner == input_uri:
            continue  # this input's own marker from before the tags: stale, not another owner
        return owner
    return None


class _MarkerBodies:
    """Marker bodies, read (one GET each) only to name another owner or to place a legacy marker."""

    def __init__(self, output_root: storage.Location):
        self.output_root = output_root
        self._uris: dict[str, str] = {}

    def input_uri(self, marker: Marker) -> str:
        if marker.relative not in self._uris:
            try:
                uri = json.loads(storage.read_bytes(self.output_root.child(marker.relative)))["input_uri"]
            except (OSError, ValueError, KeyError, TypeError):
                uri = None
            self._uris[marker.relative] = str(uri) if uri else f"the input of {marker.relative} (unreadable)"
        return self._uris[marker.relative]
