"""Inputs a restore run lost: those whose Ray task failed past its bounded retries.

A model actor killed on every attempt at one batch (the kernel's out-of-memory killer, say) must
not restart forever, so the model stage's tasks are retried a bounded number of times and Ray Data
is told to carry on past a block that still fails (`max_errored_blocks`). The block's rows then
never reach the manifest; this module gives each of them its row, so that every input still gets
exactly one outcome and the run ends.
"""

import io
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines.common import storage
from pipelines.common.error_kinds import kind_of_stage
from pipelines.restore.stages import ERROR, MANIFEST_SCHEMA, PENDING

LOST_FILE = "lost.parquet"


def lost_reason(attempts: int) -> str:
    return (f"run: the Ray task holding this input failed on all {attempts} attempts (e.g. its model actor was "
            f"killed for using too much memory); given up so that the run ends")


def record_lost_rows(rows: list[dict], manifest_dir: storage.Location, output_root: storage.Location, *, run_id: str,
                     model_ref: str, model_version: str, attempts: int) -> int:
    """Write a manifest part with one row per planned input that has none yet; returns how many."""
    recorded = _recorded_inputs(manifest_dir)
    lost = [row for row in rows if row["input_uri"] not in recorded]
    if not lost:
        return 0
    now = datetime.now(UTC)
    records = [{"run_id": run_id, "input_uri": row["input_uri"], "status": ERROR,
                # A planned error keeps its own reason; a skipped input lost in flight is not done.
                "error": row["error"] if row["status"] == ERROR else lost_reason(attempts),
                # its kind too: the run's exit status and the archive's retries depend on it
                "error_kind": row.get("error_kind") if row["status"] == ERROR and row.get("error_kind")
                else kind_of_stage(row["error"] if row["status"] == ERROR else lost_reason(attempts)),
                "model_ref": model_ref, "model_version": model_version, "finished_at": now}
               for row in lost if row["status"] in (PENDING, ERROR)]
    records += [{"run_id": run_id, "input_uri": row["input_uri"], "status": row["status"],
                 "output_uri": output_root.child(row["output_rel"]).uri, "model_ref": model_ref,
                 "model_version": model_version, "finished_at": now}
                for row in lost if row["status"] not in (PENDING, ERROR)]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records, schema=MANIFEST_SCHEMA), buffer)
    storage.write_bytes(manifest_dir.child(LOST_FILE), buffer.getvalue())
    return len(lost)


def _recorded_inputs(manifest_dir: storage.Location) -> set[str]:
    if not storage.list_files(manifest_dir):
        return set()
    table = pads.dataset(manifest_dir.path, filesystem=manifest_dir.filesystem, format="parquet").to_table(
        columns=["input_uri"])
    return set(table["input_uri"].to_pylist())
