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
A local HEAD.json is replaced by rename; an S3 PUT is atomic, so readers see the old or the new commit.

One writer at a time: the lease. A run takes it when it is absent or expired, renews it while it works
and, right before committing, checks that it still holds it and that HEAD.json still names the version
it started from. Expiry is wall-clock time, so hosts sharing a state store need roughly synced clocks.
"""

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage

STATE_SCHEMA = pa.schema([
    ("key", pa.string()),              # relative to the source root
    ("size", pa.int64()),              # bytes, as listed when processed
    ("etag", pa.string()),             # S3 ETag (no quotes); null for local files
    ("mtime_ns", pa.int64()),          # modification time as listed, ns since the epoch
    ("status", pa.string()),           # ok | error
    ("output_uri", pa.string()),       # null for errors
    ("error", pa.string()),
    ("error_kind", pa.string()),       # for errors (pipelines.error_kinds): the input's own kinds stay, others retry
    ("model_version", pa.string()),    # sha256-… of the weights that made the output
    ("run_id", pa.string()),           # the archive run that processed this content
    ("processed_at", pa.timestamp("ms", tz="UTC")),
])
CHANGES_SCHEMA = pa.schema([("action", pa.string()), *STATE_SCHEMA])  # action: new|changed|model|retry|deleted
STATE_BATCH_ROWS = 16_384  # rows per row group and per read batch: the unit of memory (~1 KiB a row as dicts)


class LeaseHeld(RuntimeError):
    """Another run holds an unexpired lease."""


class LeaseLost(RuntimeError):
    """This run's lease expired and was taken over, or was removed: it must not commit."""


class CommitConflict(RuntimeError):
    """HEAD.json moved since this run started: another run committed."""


def now_s() -> float:
    return time.time()


class StateStore:
    def __init__(self, root: storage.Location):
        self.root = root

    def location(self, relative: str) -> storage.Location:
        return self.root.child(relative)

    # ------------------------------------------------------------ reading

    def read_json(self, relative: str) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.location(relative)))
        except FileNotFoundError:
            return None

    def head(self) -> dict | None:
        return self.read_json("HEAD.json")

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

    def trusted_attempts(self, base_version: int, model_version: str) -> set[tuple[str, str]]:
        """(key, fingerprint) pairs whose done-markers an earlier, uncommitted run on the same base
        and model already invalidated: a marker found for them now was written after that."""
        trusted = set()
        for info in storage.list_files(self.location(f"pending/{base_version:010d}")):
            record = json.loads(storage.read_bytes(storage.Location(self.root.spec, info.path)))
            if record.get("model_version") != model_version:
                continue
            plan = self.location(record["plan"])
            with plan.filesystem.open_input_file(plan.path) as handle:
                table = pq.read_table(handle, columns=["key", "fingerprint"])
            trusted.update(zip(table["key"].to_pylist(), table["fingerprint"].to_pylist(), strict=True))
        return trusted

    # ------------------------------------------------------------ writing

    def upload(self, local_path: str, relative: str) -> storage.Location:
        """Copy a local file into the store, streamed (state files can be large)."""
        target = self.location(relative)
        if target.spec.scheme == "local":
            os.makedirs(os.path.dirname(target.path), exist_ok=True)
        storage.with_retries(lambda: storage.pafs.copy_files(
            local_path, target.path, source_filesystem=storage.pafs.LocalFileSystem(),
            destination_filesystem=target.filesystem))
        return target

    def write_json(self, relative: str, record: dict) -> None:
        storage.write_bytes(self.location(relative), json.dumps(record, indent=2).encode())

    def commit(self, record: dict, *, base_version: int, lease: "Lease") -> None:
        """The last step of a run: check lease and base, then replace HEAD.json (the atomic step)."""
        lease.renew()  # raises LeaseLost; a fresh expiry leaves the whole TTL for the two writes below
        current = (self.head() or {}).get("version", 0)
        if current != base_version:
            raise CommitConflict(f"HEAD.json is at version {current}, this run started from {base_version}")
        name = f"commits/{record['version']:010d}-{record['run_id']}.json"
        self.write_json(name, {**record, "record": name})
        self.write_json("HEAD.json", {**record, "record": name})

    def clean_after_commit(self, base_version: int, keep_versions: int) -> None:
        """Best effort: forget pending attempts on the old base, drop state files beyond `keep_versions`."""
        for info in storage.list_files(self.location(f"pending/{base_version:010d}")):
            storage.delete_if_exists(storage.Location(self.root.spec, info.path))
        versions = sorted(storage.list_files(self.location("versions")), key=lambda info: info.path)
        for info in versions[:-keep_versions] if keep_versions > 0 else []:
            storage.delete_if_exists(storage.Location(self.root.spec, info.path))


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


# ---------------------------------------------------------------- the lease

class Lease:
    """`lease.json` in the state store: {owner, token, acquired_at, expires_at} (epoch seconds)."""

    def __init__(self, store: StateStore, owner: str, ttl_s: float, clock: Callable[[], float] = now_s):
        self.store, self.owner, self.ttl_s, self.clock = store, owner, ttl_s, clock
        self.token = uuid.uuid4().hex
        self.acquired_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: Exception | None = None

    @staticmethod
    def default_owner(run_id: str) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{run_id}"

    def read(self) -> dict | None:
        return self.store.read_json("lease.json")

    def _write(self) -> None:
        now = self.clock()
        self.store.write_json("lease.json", {"owner": self.owner, "token": self.token,
                                             "acquired_at": self.acquired_at or now, "renewed_at": now,
                                             "expires_at": now + self.ttl_s, "ttl_s": self.ttl_s})

    def acquire(self) -> dict | None:
        """Take the lease; LeaseHeld when another run's lease has not expired. Returns the expired
        lease taken over, if any."""
        current = self.read()
        if current and current.get("token") != self.token and current.get("expires_at", 0) > self.clock():
            raise LeaseHeld(describe(current, self.clock()))
        self.acquired_at = self.clock()
        self._write()
        # Two runs that both found no lease both write; the later write wins, and the run whose token
        # is not there now backs off. (Commit re-checks too, so a tie never commits twice.)
        after = self.read()
        if not after or after.get("token") != self.token:
            raise LeaseHeld(describe(after or {}, self.clock()))
        return current if current and current.get("token") != self.token else None

    def renew(self) -> None:
        current = self.read()
        if not current or current.get("token") != self.token:
            raise LeaseLost(f"the lease on {self.store.root.uri} is no longer this run's "
                            f"({describe(current, self.clock()) if current else 'it was removed'})")
        if current.get("expires_at", 0) <= self.clock():
            raise LeaseLost(f"this run's lease on {self.store.root.uri} expired before it could be renewed")
        self._write()

    def release(self) -> None:
        current = self.read()
        if current and current.get("token") == self.token:
            storage.delete_if_exists(self.store.location("lease.json"))

    def start_heartbeat(self) -> None:
        """Renew every third of the TTL on a daemon thread, so a long restore keeps its lease."""
        def beat():
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    self.renew()
                except LeaseLost as err:
                    self.lost = err
                    return
                except OSError:  # a transient store error: the next beat tries again
                    continue
        self._thread = threading.Thread(target=beat, name="archive-lease", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def describe(lease: dict, now: float) -> str:
    left = lease.get("expires_at", 0) - now
    when = datetime.fromtimestamp(lease.get("expires_at", 0), UTC).isoformat(timespec="seconds")
    return f"held by {lease.get('owner', '?')} until {when} ({left:.0f} s left)"
