"""The steps of an archive run around the restore flow: plan (diff and select), record the attempt,
and write the next state version. See pipelines.archive.run for the order
and pipelines.archive.state for the files.
"""

import os
from dataclasses import dataclass, field

from pipelines.archive.listing import CHANGED, DELETED, NEW, Entry, diff, list_source
from pipelines.archive.state import (
    CHANGES_SCHEMA,
    STATE_SCHEMA,
    RowSink,
    StateStore,
    read_rows,
    utc_now,
)
from pipelines.common import storage
from pipelines.common.error_kinds import is_input_error

PLAN_COLUMNS = ("uri", "key", "size", "etag", "mtime_ns", "fingerprint", "action")


@dataclass
class Plan:
    selected: list[dict] = field(default_factory=list)  # key order; each a PLAN_COLUMNS row
    plan_relative: str = ""                              # in the state store
    plan_uri: str = ""                                   # restore's input manifest
    carry_path: str = ""                                 # local: committed rows kept as they are
    deleted_path: str = ""                               # local: CHANGES rows of deleted objects

    @property
    def uris(self) -> list[str]:
        return [item["uri"] for item in self.selected]


def fingerprint(entry: Entry) -> str:
    return f"{entry.size}:{entry.etag if entry.etag is not None else entry.mtime_ns}"


def object_uri(source: storage.Location, key: str) -> str:
    return f"s3://{source.path}/{key}" if source.spec.scheme == "s3" else os.path.join(source.path, key)


def plan_run(config, source, dest, store: StateStore, head, model_version: str, scratch: str, summary) -> Plan:
    """One streamed pass over listing ⋈ state: carry, select (at most max_items, key order) or defer."""
    plan = Plan(carry_path=os.path.join(scratch, "carry.parquet"), deleted_path=os.path.join(scratch,
                                                                                             "deleted.parquet"))
    carry, deleted = RowSink(plan.carry_path, STATE_SCHEMA), RowSink(plan.deleted_path, CHANGES_SCHEMA)
    listing = list_source(source, extensions=config.extensions, exclude=(dest, store.root))
    for kind, entry, row in diff(listing, store.iter_state(head)):
        if kind == DELETED:
            summary.deleted += 1
            deleted.add({**row, "action": DELETED})
            continue
        summary.listed += 1
        action = kind if kind in (NEW, CHANGED) else _reprocess_action(config, row, model_version)
        if action is None:
            summary.unchanged += 1
            carry.add(row)
            continue
        if config.max_items and len(plan.selected) >= config.max_items:
            summary.deferred += 1
            if row is not None:  # the committed row stays until the object is processed
                carry.add(row)
            continue
        counter = {NEW: "new", CHANGED: "changed"}.get(action, "reprocess")
        setattr(summary, counter, getattr(summary, counter) + 1)
        plan.selected.append({"uri": object_uri(source, entry.key), "key": entry.key, "size": entry.size,
                              "etag": entry.etag, "mtime_ns": entry.mtime_ns, "fingerprint": fingerprint(entry),
                              "action": action})
    carry.close()
    deleted.close()
    summary.selected = len(plan.selected)
    if plan.selected:
        import pyarrow as pa
        import pyarrow.parquet as pq

        local = os.path.join(scratch, "plan.parquet")
        pq.write_table(pa.Table.from_pylist(plan.selected), local)
        plan.plan_relative = f"runs/{summary.run_id}/plan.parquet"
        plan.plan_uri = store.upload(local, plan.plan_relative).uri
    return plan


def _reprocess_action(config, row: dict, model_version: str) -> str | None:
    if config.reprocess_on_model_change and row["status"] == "ok" and row["model_version"] != model_version:
        return "model"
    # An error that was not the input's fault (access denied, throttling, the network, the model; or an
    # error committed before errors had kinds) is retried by every run; the input's own stays until
    # the object changes, or --retry-errors.
    if row["status"] == "error" and (config.retry_errors or not is_input_error(row.get("error_kind"))):
        return "retry"
    return None


def prepare_outputs(plan: Plan, store: StateStore, base_version: int, model_version: str, restore_config,
                    run_id: str) -> None:
    """Record that this run is about to restore its plan on `base_version` (pending/, for audits;
    forgotten at commit). No done-marker is deleted: the plan carries each object's size and ETag (or
    mtime), which restore's markers record, so a changed object no longer matches its old marker and is
    redone, while an object whose finished output matches (a re-run after a crash) is reused. Markers
    therefore stay until their own input's new output replaces them, and another input's marker is never
    touched: an object mapped onto an output that another object owns becomes a collision error row."""
    store.write_json(f"pending/{base_version:010d}/{run_id}.json",
                     {"run_id": run_id, "base_version": base_version, "model_version": model_version,
                      "plan": plan.plan_relative, "selected": len(plan.selected), "written_at": utc_now().isoformat()})


def write_version(plan: Plan, outcomes: dict, store: StateStore, base_version: int, run_id: str, model, config,
                  summary, scratch: str) -> dict:
    """The next state (carried rows ⋈ processed rows, key order) and the run's changes, uploaded under
    names nobody points at yet; returns the commit record."""
    processed_at = utc_now()
    processed = []
    for item in plan.selected:
        outcome = outcomes[item["uri"]]
        ok = outcome["status"] in ("ok", "skipped")
        summary.ok += ok
        summary.errors += not ok
        summary.reused += outcome["status"] == "skipped"
        processed.append({"key": item["key"], "size": item["size"], "etag": item["etag"],
                          "mtime_ns": item["mtime_ns"], "status": "ok" if ok else "error",
                          "output_uri": outcome["output_uri"] if ok else None,
                          "error": None if ok else outcome["error"],
                          "error_kind": None if ok else outcome.get("error_kind"), "model_version": model.model_version,
                          "run_id": run_id, "processed_at": processed_at, "action": item["action"]})
    state = RowSink(os.path.join(scratch, "state.parquet"), STATE_SCHEMA)
    for row in _merge(read_rows(plan.carry_path), processed):
        state.add({name: row.get(name) for name in STATE_SCHEMA.names})
    state.close()
    changes = RowSink(os.path.join(scratch, "changes.parquet"), CHANGES_SCHEMA)
    for row in processed:
        changes.add(row)
    for row in read_rows(plan.deleted_path):
        changes.add(row)
    changes.close()
    version = base_version + 1
    state_name = f"versions/{version:010d}-{run_id}.parquet"
    changes_name = f"runs/{run_id}/changes.parquet"
    store.upload(state.path, state_name)
    store.upload(changes.path, changes_name)
    head = store.head()
    return {"version": version, "run_id": run_id, "base_version": base_version, "state": state_name,
            "changes": changes_name, "plan": plan.plan_relative or None, "objects": state.count,
            "parent": (head or {}).get("record"), "committed_at": utc_now().isoformat(),
            "source": config.source, "dest": config.dest, "model": model.describe(),
            "restore_manifest": (storage.resolve(config.dest).child(f"_ugpnet/manifest/{run_id}").uri
                                 if plan.selected else None),
            "counts": {name: getattr(summary, name) for name in (
                "listed", "unchanged", "new", "changed", "reprocess", "deleted", "selected", "deferred", "ok",
                "errors", "reused")}}


def _merge(carried, processed: list[dict]):
    """Two key-ordered, disjoint row streams as one key-ordered stream."""
    pending = iter(processed)
    head = next(pending, None)
    for row in carried:
        while head is not None and head["key"] < row["key"]:
            yield head
            head = next(pending, None)
        yield row
    while head is not None:
        yield head
        head = next(pending, None)
