"""Local paths on a multi-node cluster: refused before any work unless every node sees the same files.

Remote code (Ray Data tasks, model actors, Ray Train workers) runs on whatever node has room. A local
folder given as an input or output works when all those nodes share a filesystem (one machine, NFS) and
fails one file at a time, or silently writes to the wrong disk, when they do not. So before a run starts,
each other node that can run work is asked, by a small task pinned to it, what it sees at each local
path; any difference refuses the path, naming the field and what to use instead (an s3:// URI).

What is compared, without writing into inputs: for a path that exists, its kind and (files) size and
mtime, (folders) a sample of its entries; for a path still to be created (an output folder), a probe
file the driver writes into the nearest existing parent folder and removes again.
On a single node (the laptop case) nothing is probed and nothing is written.
"""

import os
import uuid
from dataclasses import dataclass

from pipelines.common import logs

PROBE_PREFIX = ".ugpnet-node-probe-"
LISTING_SAMPLE = 64          # folder entries compared (sorted): enough to tell two disks apart
PROBE_TIMEOUT_S = 120.0


class LocalPathError(ValueError):
    """A local path that remote code on another node cannot see; `field` names the setting."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.reason = field, message


@dataclass(frozen=True)
class LocalPath:
    field: str         # the config field, for the error message
    path: str          # absolute local path
    writes: bool       # an output: may not exist yet; probed with a file written beside it


def path_view(path: str, probe_name: str | None = None) -> dict:
    """What this process's node sees at `path` (runs on the driver and, as a task, on other nodes).
    Defined in the package, not in a caller, so Ray workers can unpickle it."""
    if probe_name is not None:
        probe = os.path.join(nearest_existing_dir(path), probe_name)
        try:
            with open(probe, encoding="utf-8") as handle:
                return {"probe": handle.read()}
        except OSError:
            return {"probe": None}
    if os.path.isfile(path):
        stat = os.stat(path)
        return {"kind": "file", "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if os.path.isdir(path):
        try:
            return {"kind": "dir", "entries": sorted(os.listdir(path))[:LISTING_SAMPLE]}
        except OSError as err:
            return {"kind": "dir", "error": type(err).__name__}
    return {"kind": "missing"}


def nearest_existing_dir(path: str) -> str:
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def local_paths(fields: dict[str, str | None], outputs: tuple[str, ...] = ()) -> list[LocalPath]:
    """The local (non-URI) paths among `fields` ({field: path or URI or None}); `outputs` names the
    fields that are written to."""
    found = []
    for field, value in fields.items():
        text = str(value or "").strip()
        if not text or "://" in text or text.startswith(("models:/", "preset:", "default")):
            continue
        path = text[len("file:"):] if text.startswith("file:") else text
        found.append(LocalPath(field, os.path.abspath(os.path.expanduser(path)), field in outputs))
    return found


def other_nodes() -> list[str]:
    """IDs of alive nodes other than this process's that can run work (CPU or GPU > 0)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return [node["NodeID"] for node in ray.nodes()
            if node.get("Alive") and node["NodeID"] != here
            and (node.get("Resources", {}).get("CPU", 0) > 0 or node.get("Resources", {}).get("GPU", 0) > 0)]


def check_local_paths(paths: list[LocalPath]) -> None:
    """Raise LocalPathError for the first local path another node of the (connected) Ray cluster does
    not see as this node does. Nothing happens on a single-node cluster."""
    if not paths:
        return
    nodes = other_nodes()
    if not nodes:
        return
    for local in paths:
        _check_one(local, nodes)


def check_on_named_cluster(paths: list[LocalPath]) -> None:
    """For a verb that plans before it starts Ray: when RAY_ADDRESS names a cluster (the only way to
    reach several nodes), connect now and check, so a refusal comes before any planning or lease.
    A Ray this process would start itself is a single node: nothing to check."""
    if not paths or not os.environ.get("RAY_ADDRESS"):
        return
    import ray

    if not ray.is_initialized():
        logs.init_ray()
    check_local_paths(paths)


def _check_one(local: LocalPath, nodes: list[str]) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe_name, probe_path = None, None
    if local.writes:
        probe_name = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        probe_path = os.path.join(nearest_existing_dir(local.path), probe_name)
        try:
            with open(probe_path, "x", encoding="utf-8") as handle:
                handle.write(probe_name)
        except OSError:  # not writable here: the run would fail anyway; compare what can be seen
            probe_name, probe_path = None, None
    try:
        expected = path_view(local.path, probe_name)
        remote = ray.remote(num_cpus=0, max_retries=1)(path_view)
        views = ray.get([remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                         .remote(local.path, probe_name) for node in nodes], timeout=PROBE_TIMEOUT_S)
    finally:
        if probe_path:
            os.unlink(probe_path)
    if any(view != expected for view in views):
        raise LocalPathError(local.field, refusal(local))


def refusal(local: LocalPath) -> str:
    return (f"{local.path} is a local path, and this Ray cluster has other nodes that do not see the same "
            f"files there (no shared filesystem), so remote tasks would "
            f"{'write outputs to the wrong disk' if local.writes else 'not find it'}. Use object storage "
            f"instead (an s3://bucket/prefix URI reachable from every node), or run on a single node.")
