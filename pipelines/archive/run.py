"""`ugpnet archive`: scheduled, incremental restoration of a large and growing prefix.

    take the lease                                  (another live run holds it → exit 4, nothing done)
    list the source ⋈ committed state, by key       streamed merge: new / changed / unchanged / deleted
    select new + changed (+ model / retry), key order, at most --max-items; the rest waits
    record the plan, then restore it with the restore flow (done-markers record each object's size and ETag)
    write the new state version and the run's changes, then commit: replace HEAD.json (one atomic step)

Outputs are named exactly as `ugpnet restore --input SOURCE --output DEST` names them, and the restore
manifest and summary land under `<dest>/_ugpnet/` as usual. A run that dies anywhere leaves HEAD.json at
the last commit; the next run selects the same objects again and restore skips those whose outputs the
dead run finished (their done-markers record the very content planned; see pipelines.restore.done_markers), so work is
neither lost nor done twice. Deleted objects are recorded in the run's changes and dropped from the
state; their outputs are left in place.

Exit status: 0 committed (or nothing to do); 3 committed but the restore run failed its error checks
(over --max-error-rate, every input errored, or every error was not the input's fault: those are
retried by the next run, see pipelines.common.error_kinds); 4 another run holds the lease (nothing done);
1 the run failed, lost its lease, or found lease.json or HEAD.json damaged (nothing committed);
2 a bad configuration.
"""

import _thread
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from functools import partial

from pipelines.common import logs, options, storage
from pipelines.common import shared_options as common
from pipelines.common.config_fields import ConfigError, plain_name
from pipelines.common.options import check_declared, option
from pipelines.restore.run import RestoreConfig

EXIT_RUN_FAILED = 1
EXIT_ERROR_RATE = 3
EXIT_LEASE_HELD = 4
CRASH_ENV = "UGPNET_ARCHIVE_CRASH_AT"  # test hook: os._exit() at this checkpoint (see _checkpoint)
CRASH_EXIT = 70
BARRIER_ENV = "UGPNET_ARCHIVE_BARRIER"  # test hook: a FIFO to open (blocks) right before taking the lease
CHECKPOINTS = ("planned", "invalidated", "processed", "before-commit", "after-commit")
# Restore fields the archive decides itself; every other RestoreConfig field may be passed through.
ARCHIVE_OWNED = ("input", "output", "model", "run_id", "overwrite", "extensions", "allow_local_manifest_paths",
                 "manifest_buckets")


@dataclass
class ArchiveConfig:
    """One scheduled run, each field declared once (pipelines.common.options)."""

    source: str = option(help="folder or s3://bucket/prefix holding the archive")
    dest: str = option(help="folder or s3://bucket/prefix for the outputs (named as restore names them)")
    state: str = option(help="folder or s3://bucket/prefix for the committed state, lease and history")
    model: str = option(help=f"{common.MODEL_REFERENCES}; resolved once per run")
    max_items: int = option(0, minimum=0, unit="objects", default_text="0: all",
                            help="process at most this many objects this run; the rest waits")
    reprocess_on_model_change: bool = option(False, help="also redo unchanged objects whose output another model "
                                                         "version made")
    retry_errors: bool = option(False, help="also redo unchanged objects whose last outcome was an error")
    extensions: tuple[str, ...] = common.extensions()
    lease_ttl_s: float = option(900.0, minimum=0.0, exclusive=True, unit="s", flag="--lease-ttl",
                                help="a dead run's lease blocks others this long; renewed every ttl/3")
    keep_versions: int = option(10, minimum=0, unit="versions", help="state files kept (commit records and "
                                                                     "changes are all kept)")
    run_id: str | None = common.run_id("archive-<UTC time>-<random>")
    restore: dict = option(factory=dict, cli=False, help="RestoreConfig fields for the processing (fit, actors, "
                                                         "ext, …)")

    def validate(self) -> "ArchiveConfig":
        for name in ("source", "dest", "state", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(name, "is required (a non-empty string)")
            if name != "model":
                try:
                    storage.resolve(value)
                except storage.StorageError as err:
                    raise ConfigError(name, str(err)) from err
        check_declared(self)
        locations = {name: storage.resolve(getattr(self, name)) for name in ("source", "dest", "state")}
        for a, b in (("source", "dest"), ("source", "state"), ("dest", "state")):
            try:  # outputs or state files written into the source (or each other) would be lost or re-read
                storage.disjoint_roots(locations[b], b, {a: locations[a]})
            except storage.StorageError as err:
                raise ConfigError(b, str(err)) from err
        if not isinstance(self.restore, dict):
            raise ConfigError("restore", "must be a mapping of restore fields")
        owned = sorted(set(self.restore) & set(ARCHIVE_OWNED))
        if owned:
            raise ConfigError(f"restore.{owned[0]}", "is set by the archive run itself")
        self.extensions = self.restore_config().extensions  # also fails now, named, on a bad restore field
        if self.run_id is not None:
            plain_name("run_id", self.run_id)
        return self

    def restore_config(self, plan_uri: str = "plan.parquet", run_id: str | None = None,
                       model: str | None = None) -> RestoreConfig:
        """The restore run that processes a plan: this run's id, the plan as its input manifest."""
        source = storage.resolve(self.source)
        # The plan, a manifest in the state store, names the source's objects: local files or another bucket.
        values = {**self.restore, "input": plan_uri, "output": self.dest, "model": model or self.model,
                  "run_id": run_id, "extensions": self.extensions,
                  "allow_local_manifest_paths": source.spec.scheme == "local",
                  "manifest_buckets": (source.path.partition("/")[0],) if source.spec.scheme == "s3" else ()}
        try:
            return RestoreConfig.from_mapping(values).validate()
        except ConfigError as err:
            name = err.field if err.field in ("extensions",) else f"restore.{err.field}"
            raise ConfigError(name, str(err).split(": ", 1)[-1]) from err
        except TypeError as err:
            raise ConfigError("restore", str(err)) from err

    @classmethod
    def from_mapping(cls, values: dict) -> "ArchiveConfig":
        normalised = dict(values)
        if isinstance(normalised.get("extensions"), str | list | tuple):  # element types: checked by validate
            normalised["extensions"] = tuple(normalised["extensions"].split(",") if isinstance(
                normalised["extensions"], str) else normalised["extensions"])
        return options.from_mapping(cls, normalised)


@dataclass
class ArchiveSummary:
    run_id: str
    committed: bool
    version: int                 # the committed version after this run (unchanged when nothing was committed)
    listed: int = 0
    unchanged: int = 0
    new: int = 0
    changed: int = 0
    reprocess: int = 0           # unchanged objects selected again (model change, error retry)
    deleted: int = 0
    selected: int = 0
    deferred: int = 0            # selectable but over --max-items: left for the next run
    ok: int = 0
    errors: int = 0
    reused: int = 0              # selected objects whose output an uncommitted earlier run had finished
    restore_exit_status: int = 0
    duration_s: float = 0.0
    message: str = ""
    stages: dict = field(default_factory=dict)  # the restore run's per-stage figures (restore_throughput)

    def line(self) -> str:
        from pipelines.restore.throughput import stages_line

        if not self.committed:
            return f"archive {self.run_id}: {self.message or 'nothing committed'}"
        counts = (f"archive {self.run_id}: committed version {self.version}: listed {self.listed}, new {self.new}, "
                  f"changed {self.changed}, reprocess {self.reprocess}, deleted {self.deleted}, unchanged "
                  f"{self.unchanged}; processed {self.selected} ({self.ok} ok, {self.errors} error, {self.reused} "
                  f"reused), deferred {self.deferred}; {self.duration_s:.1f} s")
        stages = stages_line(self.stages)
        return f"{counts}\n  {stages}" if stages else counts


def _checkpoint(name: str, hook) -> None:
    """Crash points for the crash-safety tests: the env hook kills the process as a crash would."""
    if os.environ.get(CRASH_ENV) == name:
        print(f"ugpnet archive: {CRASH_ENV}={name}: exiting now", file=sys.stderr, flush=True)
        os._exit(CRASH_EXIT)
    if hook is not None:
        hook(name)


def _wait_at_barrier() -> None:
    """For the concurrency tests: every run opening the same FIFO blocks until the test opens it for
    writing, which releases them all at the same instant."""
    fifo = os.environ.get(BARRIER_ENV)
    if fifo:
        with open(fifo, "rb") as released:
            released.read()


# ---------------------------------------------------------------- the run

def run(config: ArchiveConfig, hook=None) -> ArchiveSummary:
    """One scheduled run; `hook(checkpoint)` is called at each of CHECKPOINTS (tests)."""
    from pipelines.archive.lease import Lease, LeaseLost
    from pipelines.archive.state import StateStore
    from pipelines.common.models import ModelRefError, resolve_model

    started = time.perf_counter()
    config.validate()
    run_id = config.run_id or f"archive-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    logs.bind(run_id=run_id)
    s3 = storage.s3_spec_from_env()
    source, dest, state_root = (storage.resolve(getattr(config, n), s3) for n in ("source", "dest", "state"))
    _check_reachable(source, dest)
    try:
        model = resolve_model(config.model)
    except ModelRefError as err:
        raise ConfigError("model", str(err)) from err
    store = StateStore(state_root)
    lease = Lease(store, Lease.default_owner(run_id), config.lease_ttl_s)
    _wait_at_barrier()
    taken_over = lease.acquire()  # LeaseHeld propagates: nothing has been touched
    if taken_over:
        print(f"ugpnet archive: took over an expired lease ({taken_over.get('owner')})", file=sys.stderr)
    # A lease lost mid-restore stops the restore at once (KeyboardInterrupt in this thread), not after
    # the whole plan: another run may be working on the same objects by then. (Called from another
    # thread, the run stops at its next check instead.)
    in_main_thread = threading.current_thread() is threading.main_thread()
    lease.start_heartbeat(on_lost=_thread.interrupt_main if in_main_thread else None)
    try:
        try:
            summary = _run_holding_lease(config, run_id, source, dest, store, lease, model, hook)
        finally:
            lease.stop_heartbeat()  # no interrupt can be requested after this
            lease.release()
    except (KeyboardInterrupt, LeaseLost):
        # The heartbeat marks the lease lost before it interrupts this thread, so the run may meet the loss
        # at its own next check (renew, check, commit) first: either way it stopped early, and says so.
        if lease.lost is None:
            raise
        raise LeaseLost(f"{lease.lost}; the run stopped early") from None
    summary.duration_s = round(time.perf_counter() - started, 3)
    logs.emit(summary.line(), summary=asdict(summary))
    return summary


def _check_reachable(source, dest) -> None:
    """Local source or dest folders that another node of the cluster cannot see: refused before the lease."""
    from pipelines.common.cluster_paths import LocalPathError, check_on_named_cluster, local_paths

    fields = {name: loc.uri for name, loc in (("source", source), ("dest", dest)) if loc.spec.scheme == "local"}
    try:
        check_on_named_cluster(local_paths(fields, outputs=("dest",)))
    except LocalPathError as err:
        raise ConfigError(err.field, err.reason) from err


def _run_holding_lease(config, run_id, source, dest, store, lease, model, hook) -> "ArchiveSummary":
    from pipelines.archive import plan as archive_plan
    from pipelines.archive.state import StateCorrupt

    head = store.head_snapshot()  # StateCorrupt propagates: nothing is processed or committed
    base_version = head.version
    summary = ArchiveSummary(run_id=run_id, committed=False, version=base_version)
    with tempfile.TemporaryDirectory(prefix="ugpnet-archive-") as scratch:
        plan = archive_plan.plan_run(config, source, dest, store, head.record, model.model_version, scratch,
                                     summary)
        _checkpoint("planned", hook)
        outcomes = {}
        if plan.selected:
            lease.renew()  # between blocks of work: a run that lost its lease stops here (LeaseLost)
            restore_config = config.restore_config(plan.plan_uri, run_id, model=model.bundle_dir)
            archive_plan.prepare_outputs(plan, store, base_version, model.model_version, restore_config, run_id)
            _checkpoint("invalidated", hook)
            lease.renew()
            outcomes, summary.restore_exit_status, summary.stages = _process(restore_config, model, plan,
                                                                             lease.fence())
        _checkpoint("processed", hook)
        if not plan.selected and not summary.deleted:
            summary.message = f"nothing new or changed under {source.uri} (version {base_version} stays)"
            return summary
        lease.renew()  # a takeover the restore's fence met is found here at once, not at the next heartbeat
        record = archive_plan.write_version(plan, outcomes, store, base_version, run_id, model, config, summary,
                                            scratch)
        _checkpoint("before-commit", hook)
        store.commit(record, base=head, lease=lease)
    summary.committed, summary.version = True, record["version"]
    _checkpoint("after-commit", hook)
    try:
        store.clean_after_commit(base_version, config.keep_versions)
    except (OSError, StateCorrupt) as err:  # leftovers are harmless: nothing points at them
        print(f"ugpnet archive: clean-up after commit failed (harmless): {err}", file=sys.stderr)
    return summary


def _process(restore_config: RestoreConfig, model, plan, fence) -> tuple[dict[str, dict], int, dict]:
    """Run the restore flow on the plan, its tasks fenced by the lease (they stop working and writing once
    it is taken over); returns {input uri: manifest row}, restore's exit status and its per-stage figures."""
    import pyarrow.dataset as pads

    from pipelines.restore import run as restore

    result = restore.run(restore_config, fence=fence)
    if result.model.get("version") != model.model_version:
        raise RuntimeError(f"restore used model {result.model.get('version')}, the archive planned with "
                           f"{model.model_version}")
    manifest = storage.resolve(result.manifest)
    table = pads.dataset(manifest.path, filesystem=manifest.filesystem, format="parquet").to_table(
        columns=["input_uri", "status", "output_uri", "error", "error_kind"])
    outcomes = {row["input_uri"]: row for row in table.to_pylist()}
    missing = [uri for uri in plan.uris if uri not in outcomes]
    if missing or len(outcomes) != table.num_rows:
        raise RuntimeError(f"the restore manifest {result.manifest} lacks {len(missing)} planned inputs "
                           f"(e.g. {missing[:3]}) or repeats some: not committing")
    return outcomes, result.exit_status, result.stages


# ---------------------------------------------------------------- CLI

# Restore options an archive run passes through (`--fit tile` is `restore.fit`); any other restore field
# may be given under `restore:` in the config file or with `--set restore.FIELD=VALUE`.
RESTORE_FLAGS = ("fit", "stages", "actors", "batch_size", "gpus_per_actor", "cpus_per_actor", "cpus_per_task",
                 "ext", "suffix", "max_error_rate", "precision", "compile", "strip_metadata")


def add_parsers(sub) -> None:
    parser = options.add_verb(sub, "archive", ArchiveConfig, options.guarded("archive", run_config),
                              section="archive", help="incremental, scheduled restoration of a growing archive",
                              description=__doc__.split("\n\n")[0])
    options.add_options(parser.add_argument_group("restore options (as in `ugpnet restore`)"), RestoreConfig,
                        dest_prefix="restore.", only=RESTORE_FLAGS, common=False)


def run_config(config: ArchiveConfig) -> int:
    from pipelines.archive.lease import LeaseHeld, LeaseLost
    from pipelines.archive.state import CommitConflict, StateCorrupt

    try:
        summary = run(config)
    except ConfigError:
        raise
    except LeaseHeld as err:
        print(f"ugpnet archive: another archive run is active on {config.state}: lease {err}; "
              f"exiting without processing or committing", file=sys.stderr)
        return EXIT_LEASE_HELD
    except StateCorrupt as err:
        print(f"ugpnet archive: the archive state is damaged, not processing or committing: {err}",
              file=sys.stderr)
        return EXIT_RUN_FAILED
    except (LeaseLost, CommitConflict) as err:
        print(f"ugpnet archive: not committing: {err}; the next run will redo what this one did not commit",
              file=sys.stderr)
        return EXIT_RUN_FAILED
    return EXIT_ERROR_RATE if summary.restore_exit_status == EXIT_ERROR_RATE else 0


# argparse Namespace → the validated config
config_from_args = partial(options.config_from_args, cls=ArchiveConfig, section="archive")
