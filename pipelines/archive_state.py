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

One writer at a time: the lease. lease.json and HEAD.json change only by compare-and-swap
(pipelines.conditional_writes: S3 `If-None-Match: *` / `If-Match: <etag>`, locally a lock file): a run
creates the lease when absent or replaces an expired one by its etag, renews it by its etag, and
commits by replacing HEAD.json by the etag it read when it started, so of two runs that both believe
they may commit, only one can. Expiry is the lease's age by the store's own clock (its LastModified),
never a comparison of two hosts' clocks; the holder itself counts its lease lost once a whole TTL has
passed (by its monotonic clock) since its last confirmed renewal was sent, and stops working.
"""

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import conditional_writes, storage

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

    def commit(self, record: dict, *, base: Head, lease: "Lease") -> None:
        """The last step of a run: renew the lease, then replace HEAD.json only if it is still the one
        this run started from (the atomic step; a refusal means another run committed meanwhile)."""
        lease.renew()  # raises LeaseLost
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


# ---------------------------------------------------------------- the lease

LEASE_FILE = "lease.json"
# S3 stamps LastModified and Date at whole seconds: a lease counts as expired only this much after its TTL,
# so a reader never judges it expired before its holder's own deadline (sent + TTL) has passed.
STORE_CLOCK_SLACK_S = 2.0
HEARTBEATS_PER_TTL = 3
RETRY_BEAT_S = 1.0  # after a transient failure, the next renewal attempt comes sooner


class Lease:
    """`lease.json` in the state store: {owner, token, ttl_s, acquired_at, renewed_at, nonce}. The times in
    it are informative only; expiry is the file's age by the store's clock (see the module docstring)."""

    def __init__(self, store: StateStore, owner: str, ttl_s: float):
        self.store, self.owner, self.ttl_s = store, owner, ttl_s
        self.token = uuid.uuid4().hex
        self.acquired_at: float | None = None
        self.etag: str | None = None        # of our last write; what renewals and release must find
        self.deadline: float | None = None  # monotonic: a TTL after our last confirmed renewal was sent
        self.lost: Exception | None = None
        self._lock = threading.RLock()      # one renewal at a time (heartbeat and main thread)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def default_owner(run_id: str) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{run_id}"

    @property
    def location(self) -> storage.Location:
        return self.store.location(LEASE_FILE)

    def read(self) -> tuple[dict | None, conditional_writes.Snapshot | None]:
        snapshot = conditional_writes.read(self.location)
        if snapshot is None:
            return None, None
        return parse_record(snapshot.data, self.location.uri), snapshot

    def _record(self) -> bytes:
        now = time.time()
        self.acquired_at = self.acquired_at or now
        return json.dumps({"owner": self.owner, "token": self.token, "ttl_s": self.ttl_s,
                           "acquired_at": self.acquired_at, "renewed_at": now,
                           "nonce": uuid.uuid4().hex}).encode()  # every write unique: see conditional_writes

    def acquire(self) -> dict | None:
        """Take the lease; LeaseHeld when another run's lease is live (or another run took it at the same
        moment). Returns the expired lease taken over, if any."""
        current, snapshot = self.read()
        sent = time.monotonic()
        try:
            if snapshot is None:
                self.etag = conditional_writes.create(self.location, self._record())
            elif current.get("token") != self.token and not expired(current, snapshot.age_s):
                raise LeaseHeld(describe(current, snapshot.age_s))
            else:
                self.etag = conditional_writes.replace(self.location, self._record(), snapshot.etag)
        except conditional_writes.PreconditionFailed as err:
            now, after = self.read()
            raise LeaseHeld(describe(now or {}, after.age_s if after else 0.0) + " (taken at the same moment)") \
                from err
        self.deadline = sent + self.ttl_s
        return current if current and current.get("token") != self.token else None

    def renew(self) -> None:
        """Extend the lease by its etag; LeaseLost if another run took it, it was removed, or this run
        could not confirm it for a whole TTL."""
        with self._lock:
            if self.lost is not None:
                raise LeaseLost(str(self.lost))
            sent = time.monotonic()
            try:
                self.etag = conditional_writes.replace(self.location, self._record(), self.etag)
            except conditional_writes.PreconditionFailed as err:
                now, snapshot = self.read()
                self.lost = LeaseLost(f"the lease on {self.store.root.uri} is no longer this run's ("
                                      f"{describe(now, snapshot.age_s) if now else 'it was removed'})")
                raise self.lost from err
            self.deadline = sent + self.ttl_s

    def check(self) -> None:
        """Between blocks of work: LeaseLost if the heartbeat found the lease lost or could not renew it
        in time (another run may have taken it over and be working now)."""
        if self.lost is not None:
            raise LeaseLost(str(self.lost))
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise LeaseLost(f"this run could not renew its lease on {self.store.root.uri} within its "
                            f"{self.ttl_s:g} s TTL")

    def release(self) -> None:
        """Remove the lease if it is still ours (a conditional delete: never someone else's)."""
        if self.etag is None or self.lost is not None:
            return
        try:
            conditional_writes.delete(self.location, self.etag)
        except conditional_writes.PreconditionFailed:
            pass  # not ours any more: left alone

    def start_heartbeat(self, on_lost: Callable[[], None] | None = None) -> None:
        """Renew HEARTBEATS_PER_TTL times per TTL on a daemon thread. Any failure other than a transient
        store error, or transient errors for longer than the TTL, marks the lease lost and calls
        `on_lost` (the archive stops its work with it)."""
        def beat():
            interval = self.ttl_s / HEARTBEATS_PER_TTL
            while not self._stop.wait(interval):
                with self._lock:
                    if self._stop.is_set():
                        return
                    interval = self._beat_once()
                    if self.lost is not None:
                        if on_lost is not None:
                            on_lost()
                        return
        self._thread = threading.Thread(target=beat, name="archive-lease", daemon=True)
        self._thread.start()

    def _beat_once(self) -> float:
        """One renewal attempt (lock held); returns the wait before the next one."""
        try:
            self.renew()
        except LeaseLost:
            pass  # renew() recorded it in self.lost
        except OSError as err:
            if storage.is_transient(err) and time.monotonic() < (self.deadline or 0.0):
                return min(RETRY_BEAT_S, self.ttl_s / HEARTBEATS_PER_TTL)
            self.lost = LeaseLost(f"renewing the lease on {self.store.root.uri} failed: {err}")
        except Exception as err:  # a bug or a corrupt lease.json must stop the run, not the heartbeat alone
            self.lost = LeaseLost(f"renewing the lease on {self.store.root.uri} failed: {err!r}")
        return self.ttl_s / HEARTBEATS_PER_TTL

    def stop_heartbeat(self) -> None:
        with self._lock:  # after this, the heartbeat can no longer call on_lost
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def expired(lease: dict, age_s: float) -> bool:
    ttl = lease.get("ttl_s")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise StateCorrupt(f"lease.json has no TTL ({lease!r}); nothing was changed")
    return age_s > ttl + STORE_CLOCK_SLACK_S


def describe(lease: dict, age_s: float) -> str:
    ttl = lease.get("ttl_s")
    left = f"{ttl + STORE_CLOCK_SLACK_S - age_s:.0f} s left" if isinstance(ttl, int | float) else "no TTL"
    return f"held by {lease.get('owner', '?')}, renewed {age_s:.0f} s ago by the store's clock ({left})"
