"""Memory planning of a restore run on the driver: read each pending input's header, estimate its
peak per stage (pipelines/restore/memory.py), refuse those over the budget as error rows, and size
the Ray memory reservations of the decode and encode tasks and of the model actors from the rest.

The budget is what one task may reserve: `max_image_memory` when given, else the memory Ray can
reserve on the largest CPU node, less the model actors' fixed part when there is only one node.
"""

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pipelines.common import storage
from pipelines.restore import memory as restore_memory
from pipelines.restore.memory import ImageMemory, ModelGeometry
from pipelines.restore.stages import ERROR, PENDING

HEADER_THREADS = 16  # concurrent ranged GETs: latency, not CPU, bounds header reads
# A CPU task's worker process itself (Python, numpy, torch, pyarrow, Ray): Ray Data measured
# ~233 MiB per read/decode and encode/write worker here and asked for ~291 MiB.
TASK_BASE_MEMORY = 300 << 20


@dataclass(frozen=True)
class MemoryPlan:
    budget: int               # bytes one image may need in any one stage
    decode_task: int          # Ray memory reserved per read/decode/fit task (one block)
    encode_task: int          # per assemble/encode/write task (one block)
    actor: int                # per model actor
    refused: int              # inputs refused at planning
    tiles: int                # model inputs (tiles) the admitted inputs will run: sizes the actors' start-up
    largest: ImageMemory | None


def geometry_of(model) -> ModelGeometry:
    """The estimator's view of a resolved model (pipelines.common.models.ResolvedModel)."""
    from ugpnet.checkpoint import read_bundle_config
    from ugpnet.presets import Preset

    preset = Preset.from_dict(read_bundle_config(model.bundle_dir)["preset"])
    return restore_memory.model_geometry(preset, model.weights_bytes)


def cluster_budget(fixed_actor_total: int) -> tuple[int, int]:
    """(budget per image, memory of the largest CPU node) from the running Ray cluster."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive") and node["Resources"].get("CPU", 0) > 0]
    largest = int(max((node["Resources"].get("memory", 0) for node in nodes), default=0))
    budget = largest - fixed_actor_total if len(nodes) == 1 else largest
    return max(0, budget), largest


def plan_memory(rows: list[dict], *, geometry: ModelGeometry, fit: str, tile_overlap: int | None, outputs: int,
                batch_size: int, rows_per_block: int, actors: int, budget: int, node_memory: int,
                s3: storage.StorageSpec, stages: str = "fused") -> MemoryPlan:
    """Refuse (in place: status error, the reason in `error`) pending rows over the budget and
    return the reservations the admitted rows need."""
    pending = [row for row in rows if row["status"] == PENDING]
    with ThreadPoolExecutor(max_workers=max(1, min(HEADER_THREADS, len(pending)))) as pool:
        headers = list(pool.map(lambda row: _header(row["input_uri"], s3), pending))
    estimates = {}
    for row, header in zip(pending, headers, strict=True):
        if header is not None:  # an unreadable one: the decode stage gives it its proper error row
            (width, height), file_bytes = header
            estimates[id(row)] = restore_memory.estimate_image(
                width, height, geometry=geometry, fit=fit, tile_overlap=tile_overlap, file_bytes=file_bytes,
                outputs=outputs, stages=stages)
    refused = _refuse(pending, estimates, budget, geometry)
    model_share = max((image.model for image in estimates.values()), default=0)
    actor = restore_memory.rounded(restore_memory.actor_memory(geometry, batch_size, model_share))
    # A task must also fit beside the actors, or Ray Data would wait for it forever: an image that
    # fits the budget but not the room the actors leave is refused too, naming that room.
    room = node_memory - actors * actor if node_memory else budget
    refused += _refuse(pending, estimates, min(budget, room - TASK_BASE_MEMORY), geometry)
    # Ray Data cuts the rows into equal blocks in order; a task holds one block.
    blocks = max(1, math.ceil(len(rows) / rows_per_block))
    per_block = math.ceil(len(rows) / blocks)
    chunks = [[estimates[id(r)] for r in rows[i:i + per_block] if id(r) in estimates]
              for i in range(0, len(rows), per_block)]
    # Only a block of several large images can exceed the room: capped there (one image fits it).
    room = max(TASK_BASE_MEMORY, room)
    decode = min(room, TASK_BASE_MEMORY + max((restore_memory.block_reservation(c, "decode") for c in chunks),
                                              default=0))
    encode = min(room, TASK_BASE_MEMORY + max((restore_memory.block_reservation(c, "encode") for c in chunks),
                                              default=0))
    largest = max(estimates.values(), key=lambda image: image.largest[1], default=None)
    # An input whose header could not be read counts one tile (its decode gives it an error row).
    admitted = sum(row["status"] == PENDING for row in pending)
    tiles = sum(image.tiles for image in estimates.values()) + admitted - len(estimates)
    return MemoryPlan(budget=budget, decode_task=restore_memory.rounded(decode),
                      encode_task=restore_memory.rounded(encode), actor=actor, refused=refused, largest=largest,
                      tiles=tiles)


def _refuse(pending: list[dict], estimates: dict, budget: int, geometry: ModelGeometry) -> int:
    """Turn pending rows over the budget into error rows (dropping their estimates); how many."""
    refused = 0
    for row in pending:
        image = estimates.get(id(row))
        reason = restore_memory.refusal(image, budget, geometry) if image else None
        if reason:
            row["status"], row["error"] = ERROR, reason
            del estimates[id(row)]
            refused += 1
    return refused


def _header(uri: str, s3: storage.StorageSpec) -> tuple[tuple[int, int], int] | None:
    """((width, height), file bytes) from the first bytes of the file; None when unreadable."""
    try:
        location = storage.resolve(uri, s3)
        size = storage.file_info(location).size
        with location.filesystem.open_input_stream(location.path) as stream:
            head = stream.read(restore_memory.HEADER_BYTES)
        found = restore_memory.header_size(head)
        if found is None and size > len(head):  # a header larger than the first bytes (big EXIF)
            found = restore_memory.header_size(storage.read_bytes(location))
        return (found, int(size)) if found else None
    except Exception:  # unreadable now: the read stage records why, as this input's error row
        return None
