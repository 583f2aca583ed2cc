"""The archive's lease: `lease.json` in the state store says which run may work and commit now.

Every change is a compare-and-swap (pipelines.common.conditional_writes): a run creates the lease when absent
or replaces an expired one by its etag, renews it by its etag, and releases it by a delete conditional
on its etag, so two runs started together never both hold it and nobody removes another's lease.

Expiry is the lease's age by the store's own clock (its LastModified against the store's Date), never
a comparison of two hosts' clocks. The holder, for its part, counts its lease lost once a whole TTL has
passed (by its monotonic clock) since its last confirmed renewal was sent: from then on another run may
have taken it over, so it stops, even while a renewal request is still hanging in retries.
"""

import functools
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from pipelines.archive.state import StateCorrupt, StateStore, parse_record
from pipelines.common import conditional_writes, storage

LEASE_FILE = "lease.json"
# S3 stamps LastModified and Date at whole seconds: a lease counts as expired only this much after its TTL,
# so a reader never judges it expired before its holder's own deadline (sent + TTL) has passed.
STORE_CLOCK_SLACK_S = 2.0
HEARTBEATS_PER_TTL = 3
RETRY_BEAT_S = 1.0  # after a transient failure, the next renewal attempt comes sooner


class LeaseHeld(RuntimeError):
    """Another run holds an unexpired lease."""


class LeaseLost(RuntimeError):
    """This run's lease expired and was taken over, or was removed: it must not commit."""


class Lease:
    """`lease.json`: {owner, token, ttl_s, acquired_at, renewed_at, nonce}. The times in it are
    informative only; expiry is the file's age by the store's clock."""

    def __init__(self, store: StateStore, owner: str, ttl_s: float):
        self.store, self.owner, self.ttl_s = store, owner, ttl_s
        self.token = uuid.uuid4().hex
        self.acquired_at: float | None = None
        self.etag: str | None = None        # of our last write; what renewals and release must find
        self.deadline: float | None = None  # monotonic: a TTL after our last confirmed renewal was sent
        self.lost: Exception | None = None
        self._renewing = threading.Lock()   # one request at a time (heartbeat, main thread, release)
        self._signal = threading.Lock()     # stopping and calling on_lost exclude each other
        self._stop = threading.Event()
        self._on_lost: Callable[[], None] | None = None
        self._threads: list[threading.Thread] = []

    @staticmethod
    def default_owner(run_id: str) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{run_id}"

    @property
    def location(self) -> storage.Location:
        return self.store.location(LEASE_FILE)

    def read(self) -> tuple[dict | None, conditional_writes.Snapshot | None]:
        return read_lease(self.location)

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
            elif not expired(current, snapshot.age_s):
                raise LeaseHeld(describe(current, snapshot.age_s))
            else:
                self.etag = conditional_writes.replace(self.location, self._record(), snapshot.etag)
        except conditional_writes.PreconditionFailed as err:
            now, after = self.read()
            raise LeaseHeld(describe(now or {}, after.age_s if after else 0.0) + " (taken at the same moment)") \
                from err
        self.deadline = sent + self.ttl_s
        return current

    def renew(self) -> None:
        """Extend the lease by its etag; LeaseLost if another run took it or it was removed."""
        with self._renewing:
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

    def fence(self) -> Callable[[], str | None]:
        """A picklable check for the restore's tasks (pipelines/restore/fence.py): None while lease.json
        still holds this run's token. It only reads: renewing stays this process's heartbeat's job."""
        return functools.partial(lease_refusal, self.location, self.token)

    def check(self) -> None:
        """Between blocks of work: LeaseLost if the lease was found lost or could not be renewed in time
        (another run may have taken it over and be working now)."""
        if self.lost is not None:
            raise LeaseLost(str(self.lost))
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise LeaseLost(self._overdue())

    def _overdue(self) -> str:
        return f"this run could not renew its lease on {self.store.root.uri} within its {self.ttl_s:g} s TTL"

    def release(self) -> None:
        """Remove the lease if it is still ours (a conditional delete: never someone else's)."""
        with self._renewing:  # after any renewal in flight, with the etag it left
            if self.etag is None or self.lost is not None:
                return
            try:
                conditional_writes.delete(self.location, self.etag)
            except conditional_writes.PreconditionFailed:
                pass  # not ours any more: left alone

    # ------------------------------------------------------------ heartbeat

    def start_heartbeat(self, on_lost: Callable[[], None] | None = None) -> None:
        """Renew HEARTBEATS_PER_TTL times per TTL on a daemon thread, and watch the deadline on another.
        A non-transient renewal failure, or no confirmed renewal for a whole TTL (a request hanging in
        retries included), marks the lease lost and calls `on_lost` once (the archive stops its work)."""
        self._on_lost = on_lost
        for target, name in ((self._beat, "archive-lease"), (self._watch, "archive-lease-deadline")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _beat(self) -> None:
        interval = self.ttl_s / HEARTBEATS_PER_TTL
        while not self._stop.wait(interval):
            interval = self.ttl_s / HEARTBEATS_PER_TTL
            try:
                self.renew()
            except LeaseLost as err:
                return self._declare_lost(err)
            except OSError as err:
                if not storage.is_transient(err):
                    return self._declare_lost(LeaseLost(f"renewing the lease on {self.store.root.uri} failed: {err}"))
                interval = min(RETRY_BEAT_S, interval)  # the watchdog ends it if this lasts a TTL
            except Exception as err:  # a bug or a damaged lease.json must stop the run, not only this thread
                return self._declare_lost(LeaseLost(f"renewing the lease on {self.store.root.uri} failed: {err!r}"))

    def _watch(self) -> None:
        while not self._stop.wait(min(RETRY_BEAT_S, self.ttl_s / HEARTBEATS_PER_TTL)):
            if self.deadline is not None and time.monotonic() > self.deadline:
                return self._declare_lost(LeaseLost(self._overdue()))

    def _declare_lost(self, err: LeaseLost) -> None:
        with self._signal:
            if self._stop.is_set():
                return
            self.lost = self.lost or err
            self._stop.set()  # one signal: the other thread ends too
            if self._on_lost is not None:
                self._on_lost()

    def stop_heartbeat(self) -> None:
        with self._signal:  # after this, on_lost can no longer be called
            self._stop.set()
        for thread in self._threads:
            thread.join(timeout=1.0)  # a renewal still hanging ends on its own (daemon); release waits for it


def read_lease(location: storage.Location) -> tuple[dict | None, conditional_writes.Snapshot | None]:
    """The lease record and its snapshot (etag, age by the store's clock); (None, None) when absent."""
    snapshot = conditional_writes.read(location)
    if snapshot is None:
        return None, None
    return parse_record(snapshot.data, location.uri), snapshot


def lease_refusal(location: storage.Location, token: str) -> str | None:
    """None if the lease at `location` carries `token`; otherwise why the run holding `token` must stop."""
    record, snapshot = read_lease(location)
    if snapshot is None:
        return f"the lease {location.uri} was removed"
    if record.get("token") == token:
        return None
    return f"the lease {location.uri} is no longer this run's ({describe(record, snapshot.age_s)})"


def expired(lease: dict, age_s: float) -> bool:
    ttl = lease.get("ttl_s")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise StateCorrupt(f"lease.json has no TTL ({lease!r}); nothing was changed")
    return age_s > ttl + STORE_CLOCK_SLACK_S


def describe(lease: dict, age_s: float) -> str:
    ttl = lease.get("ttl_s")
    left = f"{ttl + STORE_CLOCK_SLACK_S - age_s:.0f} s left" if isinstance(ttl, int | float) else "no TTL"
    return f"held by {lease.get('owner', '?')}, renewed {age_s:.0f} s ago by the store's clock ({left})"
