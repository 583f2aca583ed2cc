"""The archive's committed state, its history and its lease, all as files under `--state` (a folder or
an `s3://` prefix):

    HEAD.json                              the commit pointer: writing it is the commit (one PUT / rename)
    lease.json                             which run may commit now: owner, token, expiry
    versions/<V>-<run>.parquet             the full state after commit V, sorted by key (one row per object)
    commits/<V>-<run>.json                 commit V's record; HEAD.json holds a copy and links its parent
    runs/<run>/plan.parquet                the run's selection; also restore's input manifest (uri, key)
    runs/<run>/changes.parquet             per key: what the run did (new/changed/model/retry/deleted) and how it ended
    pending/<base V>/<run>.json            a run that prepared outputs on base V and has not committed (yet)

Everything a run writes before HEAD.json carries its run id in the name, so a run that dies half way
leaves files nobody points at: the last committed state stays valid, and the next run starts from it.

One writer at a time: the lease (pipelines.archive.lease). HEAD.json, like lease.json, changes only by
compare-and-swap (pipelines.common.conditional_writes): a run commits by replacing HEAD.json by the etag it
read when it started, so of two runs that both believe they may commit, only one can.
"""

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.common import conditional_writes, storage

STATE_SCHEMA = pa.schema([
    ("key", pa.string()),              # relative to the source root
    ("size", pa.int64()),              # bytes, as listed when processed
    ("etag", pa.string()),             # S3 ETag (no quotes); null for local files
    ("mtime_ns", pa.int64()),          # modification time as listed, ns since the epoch
    ("status", pa.string()),           # ok | error
    ("output_uri", pa.string()),       # null for errors
    ("error", pa.string()),
    ("error_kind", pa.string()),       # for errors (common.error_kinds): the input's own kinds stay, others retry
    ("model_version", pa.string()),    # sha256-… of the weights that made the output
    ("run_id", pa.string()),           # the archive run that processed this content
    ("processed_at", pa.timestamp("ms", tz="UTC")),
])
CHANGES_SCHEMA = pa.schema([("action", pa.string()), *STATE_SCHEMA])  # action: new|changed|model|retry|deleted
STATE_BATCH_ROWS = 16_384  # rows per row group and per read batch: the unit of memory (~1 KiB a row as dicts)


class CommitConflict(RuntimeError):
    """HEAD.json moved since this run started: another run committed."""


class StateCorrupt(RuntimeError):
    """lease.json or HEAD.json (or a record they name) is not what this program writes."""


@dataclass(frozen=True)
class Head:
    """HEAD.json as read at the start of a run: the record (None before the first commit) and the etag
    the commit must still find there."""

    record: dict | None
    etag: str | None

    @property
    def version(self) -> int:
        return (self.record or {}).get("version", 0)


def parse_record(data: bytes, what: str) -> dict:
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StateCorrupt(f"{what} is not valid JSON ({err}); nothing was changed. Inspect it; restore it "
                           f"from commits/ (HEAD) or delete it (lease, once no run is active)") from err
    if not isinstance(record, dict):
        raise StateCorrupt(f"{what} holds {type(record).__name__}, not a record; nothing was changed")
    return record


class StateStore:
    def __init__(self, root: storage.Location):
        self.root = root

    def location(self, relative: str) -> storage.Location:
        return self.root.child(relative)

    # ------------------------------------------------------------ reading

    def read_json(self, relative: str) -> dict | None:
        try:
            data = storage.read_bytes(self.location(relative))
        except FileNotFoundError:
            return None
        return parse_record(data, self.location(relative).uri)

    def head(self) -> dict | None:
        return self.head_snapshot().record

    def head_snapshot(self) -> Head:
        location = self.location("HEAD.json")
        snapshot = conditional_writes.read(location)
        if snapshot is None:
            return Head(None, None)
        record = parse_record(snapshot.data, location.uri)
        if not isinstance(record.get("version"), int) or not isinstance(record.get("state"), str):
            raise StateCorrupt(f"{location.uri} lacks an integer version or a state file; nothing was changed")
        return Head(record, snapshot.etag)

    def iter_state(self, head: dict | None) -> Iterator[dict]:
        """The committed rows in key order, a row group at a time."""
        if not head:
            return
        location = self.location(head["state"])
        with location.filesystem.open_input_file(location.path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=STATE_BATCH_ROWS):
                yield from batch.to_pylist()

    def committed_chain(self) -> list[dict]:
        """Every commit record from the first to HEAD (follows parent links; for checks and audits)."""
        chain, record = [], self.head()
        while record:
            chain.append(record)
            record = self.read_json(record["parent"]) if record.get("parent") else None
        return chain[::-1]

    # ------------------------------------------------------------ writing

    def upload(self, local_path: str, relative: str) -> storage.Location:
        """Copy a local file into the store, streamed (state files can be large)."""
        target = self.location(relative)
        if target.spec.scheme == "local":
            os.makedirs(os.path.dirname(target.path), exist_ok=True)
        storage.with_retries(lambda: storage.pafs.copy_files(
            local_path, target.path, source_filesystem=storage.pafs.LocalFileSystem(),
            destination_filesystem=target.filesystem))
        if target.spec.scheme == "local":  # on disk before HEAD.json can point at it
            storage.fsync_file(target.path)
            storage.fsync_directory(os.path.dirname(target.path))
        return target

    def write_json(self, relative: str, record: dict) -> None:
        storage.write_bytes(self.location(relative), json.dumps(record, indent=2).encode())

    def commit(self, record: dict, *, base: Head, lease) -> None:
        """The last step of a run: renew the lease, then replace HEAD.json only if it is still the one
        this run started from (the atomic step; a refusal means another run committed meanwhile)."""
        lease.renew()  # raises LeaseLost (pipelines.archive.lease)
        name = f"commits/{record['version']:010d}-{record['run_id']}.json"
        self.write_json(name, {**record, "record": name})
        data = json.dumps({**record, "record": name}, indent=2).encode()
        location = self.location("HEAD.json")
        try:
            if base.etag is None:
                conditional_writes.create(location, data)
            else:
                conditional_writes.replace(location, data, base.etag)
        except conditional_writes.PreconditionFailed as err:
            now = self.head_snapshot().version
            raise CommitConflict(f"HEAD.json moved (now version {now}) since this run started from version "
                                 f"{base.version}: another run committed") from err

    def clean_after_commit(self, base_version: int, keep_versions: int) -> None:
        """Best effort: forget pending attempts on the old base; keep the state files of the last
        `keep_versions` commits on HEAD's chain (HEAD's own always) and drop every other one, such as
        those of runs that died before committing (their names can sort after HEAD's)."""
        for info in storage.list_files(self.location(f"pending/{base_version:010d}")):
            storage.delete_if_exists(storage.Location(self.root.spec, info.path))
        if keep_versions <= 0:
            return
        kept = {self.location(state).path for state in self.recent_states(keep_versions)}
        if not kept:  # no commit to protect: never delete blindly
            return
        for info in storage.list_files(self.location("versions")):
            if info.path not in kept:
                storage.delete_if_exists(storage.Location(self.root.spec, info.path))

    def recent_states(self, count: int) -> list[str]:
        """The state files of HEAD and its parents, newest first, at most `count`."""
        states, record = [], self.head()
        while record and len(states) < count:
            states.append(record["state"])
            record = self.read_json(record["parent"]) if record.get("parent") else None
        return states


class RowSink:
    """Dict rows streamed into a local parquet file a row group at a time (bounded memory)."""

    def __init__(self, path: str, schema: pa.Schema):
        self.path, self.schema = path, schema
        self.count, self._buffer = 0, []
        self._writer = pq.ParquetWriter(path, schema)

    def add(self, row: dict) -> None:
        self._buffer.append(row)
        if len(self._buffer) == STATE_BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
        self.count, self._buffer = self.count + len(self._buffer), []

    def close(self) -> str:
        if self._buffer or self.count == 0:  # an empty file still carries the schema
            self._flush()
        self._writer.close()
        return self.path


def read_rows(path: str) -> Iterator[dict]:
    """Rows of a local parquet file, a row group at a time."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=STATE_BATCH_ROWS):
        yield from batch.to_pylist()


def utc_now() -> datetime:
    return datetime.now(UTC)
