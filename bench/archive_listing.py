"""Archive change detection at scale: time and peak memory to diff a listing of N objects against a
committed state of 0.9 N (synthetic keys: 10.5 % new, 1 % changed, 0.5 % deleted), and the state's size
on disk.

Side by side, each in a fresh process (so peak RSS is its own):
- streamed: what `ugpnet archive` does — a key-ordered listing generator merged with the state file
  read a row group at a time, unchanged rows streamed to the carry file (pipelines.archive.listing.diff,
  pipelines.archive.state.RowSink);
- in-memory: the obvious alternative — the whole state in a dict, the whole listing in a list.

    python bench/archive_listing.py                      # N = 100,000 and 1,000,000
    python bench/archive_listing.py --objects 100000

Prints one row per (N, method) and the in-memory / streamed ratios. No S3 involved: the listing is
generated, so the figures are the diff's own cost, not the network's.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def key(i: int) -> str:
    return f"scans/{i // 1000:06d}/{i:09d}.jpg"  # zero-padded: numeric order is key order


def listing(n: int):
    from pipelines.archive.listing import Entry

    for i in range(n):
        yield Entry(key(i), 50_000 + i % 977, f"etag-{i:x}{'-v2' if i % 100 == 0 else ''}", 1_700_000_000 + i)


def state_rows(n: int):
    """0.9 n committed rows: every listed object but the 10 % new ones; 0.5 % of them under keys that
    are no longer listed (deleted; their listed twins count as new)."""
    from datetime import UTC, datetime

    when = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(n):
        if i % 10 == 9:
            continue
        k = key(i).replace(".jpg", "-gone.jpg") if i % 200 == 3 else key(i)  # '-' < '.': still key order
        yield {"key": k, "size": 50_000 + i % 977, "etag": f"etag-{i:x}", "mtime_ns": 1_700_000_000 + i,
               "status": "ok", "output_uri": f"s3://restored/{k[:-4]}.png", "error": None,
               "model_version": "sha256-0123456789abcdef", "run_id": "archive-20260101T000000Z-abcdef",
               "processed_at": when}


def write_state(n: int, path: str) -> int:
    from pipelines.archive.state import STATE_SCHEMA, RowSink

    sink = RowSink(path, STATE_SCHEMA)
    for row in state_rows(n):
        sink.add(row)
    sink.close()
    return sink.count


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def measure(method: str, n: int, state_path: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.archive.listing import CHANGED, DELETED, NEW, UNCHANGED, diff, is_changed
    from pipelines.archive.state import STATE_SCHEMA, RowSink, read_rows

    before = rss_kib("VmRSS")
    started = time.perf_counter()
    counts = {NEW: 0, CHANGED: 0, UNCHANGED: 0, DELETED: 0}
    if method == "streamed":
        with tempfile.TemporaryDirectory() as scratch:
            carry = RowSink(os.path.join(scratch, "carry.parquet"), STATE_SCHEMA)
            for kind, _, row in diff(listing(n), read_rows(state_path)):
                counts[kind] += 1
                if kind == UNCHANGED:
                    carry.add(row)
            carry.close()
    else:
        committed = {row["key"]: row for row in pq.read_table(state_path).to_pylist()}
        listed = list(listing(n))
        seen = set()
        unchanged = []
        for entry in listed:
            seen.add(entry.key)
            row = committed.get(entry.key)
            kind = NEW if row is None else CHANGED if is_changed(entry, row) else UNCHANGED
            counts[kind] += 1
            if kind == UNCHANGED:
                unchanged.append(row)
        counts[DELETED] = sum(1 for k in committed if k not in seen)
        with tempfile.TemporaryDirectory() as scratch:
            pq.write_table(pa.Table.from_pylist(unchanged, schema=STATE_SCHEMA),
                           os.path.join(scratch, "carry.parquet"))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mib": (rss_kib("VmHWM") - before) / 1024, "counts": counts}


def run_one(method: str, n: int, state_path: str) -> dict:
    result = subprocess.run([sys.executable, __file__, "--measure", method, "--objects", str(n), "--state",
                             state_path], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", default="100000,1000000", help="listing sizes N, comma-separated")
    parser.add_argument("--measure", choices=("streamed", "in-memory"), help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, int(args.objects), args.state)))
        return
    print(f"{'N':>9} {'state rows':>10} {'state MiB':>9} {'B/row':>6} {'method':>9} {'s':>7} {'keys/s':>9} "
          f"{'peak MiB':>9}  counts")
    for n in (int(part) for part in args.objects.split(",")):
        with tempfile.TemporaryDirectory() as workdir:
            state_path = os.path.join(workdir, "state.parquet")
            rows = write_state(n, state_path)
            size = os.path.getsize(state_path)
            results = {method: run_one(method, n, state_path) for method in ("streamed", "in-memory")}
            assert results["streamed"]["counts"] == results["in-memory"]["counts"], results
            for method, result in results.items():
                print(f"{n:>9,} {rows:>10,} {size / 2**20:>9.2f} {size / rows:>6.1f} {method:>9} "
                      f"{result['seconds']:>7.2f} {n / result['seconds']:>9,.0f} {result['peak_mib']:>9.1f}  "
                      f"{result['counts']}")
            streamed, naive = results["streamed"], results["in-memory"]
            print(f"{'':>9} in-memory / streamed: time x{naive['seconds'] / streamed['seconds']:.2f}, "
                  f"peak memory x{naive['peak_mib'] / max(streamed['peak_mib'], 0.1):.1f}")


if __name__ == "__main__":
    main()
