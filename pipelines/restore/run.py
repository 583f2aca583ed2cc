"""`ugpnet restore`: batch restoration of a folder, an S3 prefix or a manifest of URIs on Ray Data.

    list inputs (driver) → read bytes → decode → fit          CPU tasks
                         → model: fused, or restoration → synthesis → fusion    actor pools
                         → assemble → encode → write output + done-marker        CPU tasks
                         → manifest rows (parquet)        <output>/_ugpnet/manifest/<run_id>/
    run summary (JSON)                                      <output>/_ugpnet/runs/<run_id>.json

Only counts come back to the driver. The model reference is resolved once, on the driver; its
content hash is the model version recorded in every row and used to skip finished inputs on re-runs.

Exit status: 0 when every input got an outcome (errors of the inputs' own making included);
EXIT_ERROR_RATE when more than `max_error_rate` of the processed inputs errored, when every input
errored, or when there were errors and none of them was the input's fault (access denied, throttling,
network, server, model, output store: see pipelines.common.error_kinds), since such a run did not do its job;
EXIT_RUN_FAILED when the run itself failed; and 2 (the CLI's usual) for a bad configuration, which is
caught before any work.
"""

import json
import math
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial

from pipelines.common import logs, options, storage
from pipelines.common import shared_options as common
from pipelines.common.cluster import check_resources, ensure_ray
from pipelines.common.config_fields import (
    ConfigError,
    check_choice,
    parse_bucket_names,
    parse_extensions,
    parse_int_tuple,
    plain_name,
)
from pipelines.common.error_kinds import is_input_error
from pipelines.common.options import check_declared, option
from pipelines.restore.done_markers import output_settings
from pipelines.restore.stages import ERROR, MODULES, OK, PENDING, SKIPPED, TRANSPORTS

EXIT_RUN_FAILED = 1
EXIT_ERROR_RATE = 3
OUTPUT_EXTS = ("png", "jpg", "webp", "tiff", "auto")  # auto: each input's own format (restore_inputs.output_ext)
_EXT_ALIASES = {"jpeg": "jpg", "tif": "tiff"}
STAGE_MODES = ("fused", "split")
MANIFEST_ROWS_PER_FILE = 1000
# Attempts at one model batch whose actor dies (Ray Data's default retries forever): a batch that
# kills its actor every time (e.g. out of memory) then becomes error rows and the run ends.
MODEL_TASK_RETRIES = 2


@dataclass
class RestoreConfig:
    """Everything a restore run needs, each field declared once (pipelines.common.options): its flag, help,
    default and unit come from here."""

    input: str = option(help="folder, s3://bucket/prefix, one image, or a .txt/.csv/.parquet manifest of URIs")
    output: str = option(help="folder or s3://bucket/prefix")
    model: str = common.model()
    fit: str = common.fit()
    stages: str = option("fused", choices=STAGE_MODES, help="fused: one actor pool runs all modules; split: one "
                                                            "pool per module")
    actors: tuple[int, ...] = option((1,), unit="actors", help="actors per pool; split mode also takes R,S,F "
                                                               "(restoration, synthesis, fusion)")
    batch_size: int | None = option(None, minimum=1, unit="tiles",
                                    default_text="measured per device when each actor starts; on CPU never "
                                                 "slower per image than 1",
                                    help="model-size tiles per forward pass (and images per model call)")
    precision: str = common.precision()
    compile: str = option("off", choices=common.COMPILE_MODES,
                          help="torch.compile the model: auto compiles when the planned images amortise it")
    compile_cache_dir: str = option("", default_text="~/.cache/ugpnet/inductor",
                                    help="inductor cache folder on each actor's node")
    gpus_per_actor: float = common.gpus_per_actor()
    cpus_per_actor: float = common.cpus_per_actor()
    cpus_per_task: float = common.cpus_per_task()
    threads_per_actor: int = common.threads_per_actor()
    ext: str = option("png", help="output format: png, jpg, webp, tiff or auto (each input's own; bmp and gif "
                                  "become png); 16-bit inputs stay 16-bit in png and tiff, jpg and webp hold 8 bits")
    suffix: str = option("", help="appended to each output stem: a/b.jpg → a/b<suffix>.png")
    quality: int = option(95, minimum=1, maximum=100, unit="1..100", help="jpg/webp quality")
    strip_metadata: bool = option(False, help="write outputs without the input's ICC profile and EXIF (kept by "
                                              "default, EXIF without its orientation tag and with the output's size)")
    save_intermediate: bool = option(False, help="also write _intermediate/restored/ and _intermediate/synthesized/")
    overwrite: bool = option(False, help="redo inputs already done for this model version")
    max_error_rate: float = option(1.0, minimum=0.0, maximum=1.0, unit="fraction",
                                   help="exit 3 when errors / processed exceeds this")
    extensions: tuple[str, ...] = common.extensions()
    tile_overlap: int | None = option(None, minimum=0, unit="input px", default_text="input size / 4",
                                      help="tile overlap")
    max_pixels: int = common.max_pixels()
    max_output_pixels: int | None = option(None, minimum=1, unit="px",
                                           default_text="no pixel limit; the memory budget decides",
                                           help="largest output width*height*scale² accepted")
    max_image_memory: int = option(0, minimum=0, unit="bytes",
                                   default_text="0: what the largest Ray node can reserve (less the model actors "
                                                "on a one-node cluster)",
                                   help="memory one image may need in a stage")
    rows_per_block: int = option(0, minimum=0, unit="inputs",
                                 default_text="0: 2 x the images per model call (8 for 512² tiles on CPU, up to 32 "
                                              "for small tiles, 16 with GPUs)",
                                 help="inputs per Ray Data block")
    transport: str = option("compact", choices=TRANSPORTS, help="how tiles travel between stages: compact (uint16 "
                                                                "tiles, 8-bit fused images) or float32")
    run_id: str | None = common.run_id()
    allow_local_manifest_paths: bool = common.allow_local_manifest_paths()
    manifest_buckets: tuple[str, ...] = option((), help="comma-separated buckets a manifest on S3 may name besides "
                                                        "its own")

    def validate(self) -> "RestoreConfig":
        """Check and normalise every field; raises ConfigError naming the first bad one."""
        for name in ("input", "output", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(name, "is required (a non-empty string)")
        self.ext = str(self.ext).lower().lstrip(".")
        self.ext = _EXT_ALIASES.get(self.ext, self.ext)
        check_choice("ext", self.ext, OUTPUT_EXTS)
        check_declared(self)
        self.actors = parse_int_tuple("actors", self.actors)
        if any(n < 1 for n in self.actors):
            raise ConfigError("actors", f"every pool needs at least 1 actor, got {self.actors}")
        wanted = (1,) if self.stages == "fused" else (1, 3)
        if len(self.actors) not in wanted:
            raise ConfigError("actors", f"{self.stages} mode takes {' or '.join(map(str, wanted))} number(s), "
                                        f"got {len(self.actors)}: {self.actors}")
        if self.precision == "fp16" and self.gpus_per_actor == 0:
            raise ConfigError("precision", "fp16 runs only on CUDA and gpus_per_actor is 0; on CPU use bf16 or fp32")
        if self.cpus_per_actor == 0 and self.gpus_per_actor == 0:
            raise ConfigError("cpus_per_actor", "an actor with neither CPUs nor GPUs would oversubscribe the node")
        if "/" in self.suffix or "\\" in self.suffix or storage.unsafe_key_reason(self.suffix or "x"):
            raise ConfigError("suffix", f"must be a string without path separators, got {self.suffix!r}")
        self.extensions = parse_extensions(self.extensions)
        if self.run_id is not None:
            plain_name("run_id", self.run_id)
        self.manifest_buckets = parse_bucket_names("manifest_buckets", self.manifest_buckets)
        return self

    @property
    def manifest_policy(self):
        from pipelines.restore.inputs import ManifestPolicy

        return ManifestPolicy(allow_local_paths=self.allow_local_manifest_paths, buckets=self.manifest_buckets)

    @property
    def pool_sizes(self) -> dict[str, int]:
        if self.stages == "fused":
            return {"fused": self.actors[0]}
        sizes = self.actors * 3 if len(self.actors) == 1 else self.actors
        return dict(zip(MODULES, sizes, strict=True))

    @classmethod
    def from_mapping(cls, values: dict) -> "RestoreConfig":
        """From a config file's mapping; keys are field names (`-` or `_`), unknown keys are errors."""
        return options.from_mapping(cls, values)

    def public_dict(self) -> dict:
        """The config as recorded in run summaries (it holds no secrets: those stay in the environment)."""
        data = asdict(self)
        data["actors"], data["extensions"] = list(self.actors), list(self.extensions)
        data["manifest_buckets"] = list(self.manifest_buckets)
        return data


@dataclass
class RunSummary:
    run_id: str
    total: int
    ok: int
    errors: int
    skipped: int
    duration_s: float
    images_per_s: float          # ok outputs per second of wall time (listing to summary)
    error_rate: float            # errors / (ok + errors)
    max_error_rate: float
    output: str
    manifest: str
    summary_path: str
    model: dict
    stage_ms: dict = field(default_factory=dict)  # summed per-input milliseconds per stage
    error_kinds: dict = field(default_factory=dict)  # errors per kind (pipelines.common.error_kinds)
    stages: dict = field(default_factory=dict)  # per stage: time_s, images, images_per_s (restore_throughput)

    @property
    def failure(self) -> str:
        """Why the run did not do its job ('' when it did): the reason behind EXIT_ERROR_RATE."""
        if self.error_rate > self.max_error_rate:
            return f"error rate {self.error_rate:.3f} exceeds --max-error-rate {self.max_error_rate}"
        if self.errors and self.errors == self.total:
            return f"every input ({self.total}) ended in an error"
        if self.errors and not any(is_input_error(kind) for kind in self.error_kinds):
            kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.error_kinds.items()))
            return f"every error ({kinds}) came from the store, the network or this system, not from an input"
        return ""

    @property
    def exit_status(self) -> int:
        return EXIT_ERROR_RATE if self.failure else 0

    def line(self) -> str:
        """The text summary: the counts, then (when any stage ran) the per-stage figures, indented."""
        from pipelines.restore.throughput import stages_line

        counts = (f"restore {self.run_id}: {self.ok} ok, {self.errors} error, {self.skipped} skipped of {self.total} "
                  f"inputs in {self.duration_s:.1f} s ({self.images_per_s:.2f} images/s); "
                  f"model {self.model.get('version')}; manifest {self.manifest}")
        stages = stages_line(self.stages)
        return f"{counts}\n  {stages}" if stages else counts


# ---------------------------------------------------------------- the run

def run(config: RestoreConfig, fence=None) -> RunSummary:
    """Validate, plan on the driver, stream the inputs through Ray Data, write the summary.
    `fence`: a picklable callable, None while the run may work, else why not (pipelines/restore/fence.py;
    the archive passes its lease's)."""
    from pipelines.common.models import ModelRefError, load_payload, resolve_model
    from pipelines.restore.fence import start_fence
    from pipelines.restore.inputs import InputError, list_inputs, plan_rows
    from pipelines.restore.lost import record_lost_rows
    from pipelines.restore.throughput import stage_figures

    started = time.perf_counter()
    started_at = datetime.now(UTC)
    config.validate()
    run_id = config.run_id or f"{started_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    logs.bind(run_id=run_id)
    s3 = storage.s3_spec_from_env()
    source = _location("input", config.input, s3)
    output = _location("output", config.output, s3)
    try:
        storage.disjoint_roots(output, "output", {"input": source})
    except storage.StorageError as err:
        raise ConfigError("output", str(err)) from err
    _check_output_root(output)
    try:
        model = resolve_model(config.model)
    except ModelRefError as err:
        raise ConfigError("model", str(err)) from err
    try:
        items, kind = list_inputs(source, extensions=config.extensions, s3=s3, exclude=output,
                                  policy=config.manifest_policy)
    except (InputError, OSError) as err:
        raise ConfigError("input", str(err)) from err
    if kind == "manifest":
        refuse_entries_under(output, "output", items)
    rows = plan_rows(items, output_root=output, ext=config.ext, suffix=config.suffix,
                     model_version=model.model_version, overwrite=config.overwrite, settings=output_settings(
                         fit=config.fit, tile_overlap=config.tile_overlap, ext=config.ext, quality=config.quality,
                         save_intermediate=config.save_intermediate, precision=config.precision,
                         transport=config.transport, strip_metadata=config.strip_metadata))

    manifest_dir = output.child(f"_ugpnet/manifest/{run_id}")
    if storage.list_files(manifest_dir):
        raise ConfigError("run_id", f"{run_id!r} was already used under {output.uri}: its manifest exists")
    if rows:
        import ray

        started_ray = ensure_ray()
        try:
            check_reachable_inputs(output, items)
            memory = _plan_memory(rows, config, model, s3)
            check_resources(config, memory.actor)
            payload_ref = ray.put(load_payload(model))
            _execute(rows, config, model, payload_ref, run_id, output, s3, manifest_dir, memory,
                     start_fence(fence) if fence is not None else None)
            record_lost_rows(rows, manifest_dir, output, run_id=run_id, model_ref=config.model,
                             model_version=model.model_version, attempts=1 + MODEL_TASK_RETRIES)
        finally:
            if started_ray:
                ray.shutdown()
    counts, stage_ms, stage_images, error_kinds = _read_back(manifest_dir) if rows else ({}, {}, {}, {})
    if sum(counts.values()) != len(rows):
        raise RuntimeError(f"the manifest holds {sum(counts.values())} rows for {len(rows)} inputs")
    duration = time.perf_counter() - started
    ok, errors = counts.get(OK, 0), counts.get(ERROR, 0)
    summary = RunSummary(
        run_id=run_id, total=len(rows), ok=ok, errors=errors, skipped=counts.get(SKIPPED, 0),
        duration_s=round(duration, 3), images_per_s=round(ok / duration, 4) if duration > 0 else 0.0,
        error_rate=round(errors / (ok + errors), 6) if ok + errors else 0.0, max_error_rate=config.max_error_rate,
        output=output.uri, manifest=manifest_dir.uri, summary_path=output.child(f"_ugpnet/runs/{run_id}.json").uri,
        model=model.describe(), stage_ms=stage_ms, error_kinds=error_kinds,
        stages=stage_figures(stage_ms, stage_images))
    record = {**asdict(summary), "started_at": started_at.isoformat(), "finished_at": datetime.now(UTC).isoformat(),
              "exit_status": summary.exit_status, "failure": summary.failure, "config": config.public_dict(),
              "error_rate_definition": "errors / (ok + errors)"}
    storage.write_bytes(output.child(f"_ugpnet/runs/{run_id}.json"), json.dumps(record, indent=2).encode())
    logs.emit(summary.line(), summary=asdict(summary))
    return summary


def _location(name: str, uri: str, s3: storage.StorageSpec) -> storage.Location:
    try:
        return storage.resolve(uri, s3)
    except storage.StorageError as err:
        raise ConfigError(name, str(err)) from err


def refuse_entries_under(output: storage.Location, output_name: str, items, input_name: str = "input") -> None:
    """A manifest entry inside the output root could be overwritten by an output: refuse the run."""
    for number, item in enumerate(items, start=1):
        if item.error:
            continue
        try:
            storage.disjoint_roots(output, output_name, {f"manifest entry {number}": storage.resolve(item.input_uri)})
        except storage.StorageError as err:
            raise ConfigError(input_name, str(err)) from err


def check_reachable_inputs(output: storage.Location, items) -> None:
    """Local inputs or outputs that the cluster's other nodes cannot see are refused (one probe task per
    node; nothing on a single node). One local input file stands for the rest (a manifest can list files)."""
    from pipelines.common.cluster_paths import LocalPathError, check_local_paths, local_paths

    fields = {"input": first_local_input(items), "output": output.uri if output.spec.scheme == "local" else None}
    try:
        check_local_paths(local_paths(fields, outputs=("output",)))
    except LocalPathError as err:
        raise ConfigError(err.field, err.reason) from err


def first_local_input(items) -> str | None:
    """The local input that stands for the rest in the reachability probe. Entries that are already
    error rows (a local path an S3 manifest may not name) are never read, so they are not probed:
    probing one could refuse a run over a file it will not touch."""
    return next((item.input_uri for item in items if not item.error and "://" not in item.input_uri), None)


def _check_output_root(output: storage.Location) -> None:
    """Fail now, not once per image, when the output cannot exist: no bucket, or a file in the way."""
    try:
        if output.spec.scheme == "s3":
            bucket = storage.Location(output.spec, output.path.split("/", 1)[0])
            if storage.file_info(bucket).type == storage.pafs.FileType.NotFound:
                raise ConfigError("output", f"bucket s3://{bucket.path} does not exist")
        if storage.file_info(output).type == storage.pafs.FileType.File:
            raise ConfigError("output", f"{output.uri} is a file, not a folder")
    except OSError as err:
        raise ConfigError("output", f"cannot reach {output.uri}: {err}") from err


def _plan_memory(rows, config: RestoreConfig, model, s3):
    """Estimates from the inputs' headers: refusals (as error rows) and the Ray memory reservations."""
    from pipelines.restore import budget as restore_budget
    from pipelines.restore import memory as restore_memory

    geometry = restore_budget.geometry_of(model)
    actors = sum(config.pool_sizes.values())
    batch = largest_batch(config, model.input_size)
    budget, node_memory = restore_budget.cluster_budget(
        actors * restore_memory.actor_memory(geometry, batch, 0))
    if config.max_image_memory:
        budget = min(budget, config.max_image_memory) if budget else config.max_image_memory
    return restore_budget.plan_memory(
        rows, geometry=geometry, fit=config.fit, tile_overlap=config.tile_overlap,
        outputs=3 if config.save_intermediate else 1, batch_size=batch,
        rows_per_block=rows_per_block(config, model.input_size),
        actors=actors, budget=budget, node_memory=node_memory, s3=s3, stages=config.stages)


def _execute(rows, config, model, payload_ref, run_id, output, s3, manifest_dir, memory, fence) -> None:
    import ray

    from pipelines.restore.stages import StageSettings

    settings = StageSettings(
        run_id=run_id, model_ref=config.model, model_version=model.model_version, output_root=output, s3=s3,
        input_size=model.input_size, scale=model.scale, fit=config.fit, tile_overlap=config.tile_overlap,
        max_pixels=config.max_pixels, max_output_pixels=config.max_output_pixels, ext=config.ext,
        quality=config.quality, save_intermediate=config.save_intermediate, transport=config.transport,
        stages=config.stages, strip_metadata=config.strip_metadata, fence=fence)
    # A block still failing after its retries is carried past, not the run's end: its rows get
    # their error rows afterwards (pipelines/restore/lost.py).
    context = ray.data.DataContext.get_current().copy()
    context.max_errored_blocks = -1
    with ray.data.DataContext.current(context):
        _run_dataset(rows, config, payload_ref, settings, manifest_dir, memory)


def _run_dataset(rows, config, payload_ref, settings, manifest_dir, memory) -> None:
    import ray

    from pipelines.restore.stages import ModelStage, encode_and_write, read_decode_fit

    rows_per_call = rows_per_model_call(config, settings.input_size)
    block_rows = rows_per_block(config, settings.input_size)
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / block_rows)))
    # Every stage reserves the memory its largest block needs (pipelines/restore/budget.py).
    dataset = dataset.map_batches(read_decode_fit, fn_kwargs={"settings": settings}, batch_size=None,
                                  batch_format="numpy", num_cpus=config.cpus_per_task,
                                  memory=memory.decode_task or None)
    threads = config.threads_per_actor or max(1, math.ceil(config.cpus_per_actor))
    # A re-run with nothing left to do starts no model actors; its rows only need recording.
    pending = sum(row["status"] == PENDING for row in rows)
    pools = config.pool_sizes if pending else {}
    for module, size in pools.items():
        # The start-up measurements are sized by the forward passes ahead: tiles, not images (a 256²
        # photo is 9 tiles of a 128² model; counted in images, the batch search got a ninth of its budget).
        execution = execution_settings(config, planned_tiles=math.ceil(memory.tiles / size))
        dataset = dataset.map_batches(
            ModelStage, fn_constructor_kwargs=dict(payload_ref=payload_ref, module=module,
                                                   batch_size=config.batch_size, threads=threads,
                                                   use_gpu=config.gpus_per_actor > 0,
                                                   keep_intermediate=config.save_intermediate, execution=execution,
                                                   transport=config.transport),
            batch_size=rows_per_call, batch_format="numpy", compute=ray.data.ActorPoolStrategy(
                size=size, max_tasks_in_flight_per_actor=1),
            num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor or None,
            # Reserving the model's memory also keeps Ray from fusing the CPU decode tasks into the
            # model actors (it fuses only stages with equal resource requests). A killed actor is
            # restarted (the pool needs it for the other batches), but its batch is re-run only
            # MODEL_TASK_RETRIES times: Ray Data's default (-1) re-runs a batch that kills it forever.
            # One batch in flight per actor, so that a death is charged to the batch that caused
            # it alone (a queued batch would lose an attempt too, and could run out of them).
            memory=memory.actor, max_restarts=-1, max_task_retries=MODEL_TASK_RETRIES)
    dataset = dataset.map_batches(encode_and_write, fn_kwargs={"settings": settings}, batch_size=None,
                                  batch_format="numpy", num_cpus=config.cpus_per_task,
                                  memory=memory.encode_task or None)
    # Local parquet files are written into a hidden folder and moved up once all are whole, so a killed
    # run leaves no truncated file where readers look (they skip names starting with "." or "_").
    # An S3 PUT is atomic already.
    local = manifest_dir.spec.scheme == "local"
    target = manifest_dir.child(f".partial-{uuid.uuid4().hex[:8]}") if local else manifest_dir
    dataset.write_parquet(target.path, filesystem=target.filesystem,
                          min_rows_per_file=min(len(rows), MANIFEST_ROWS_PER_FILE),
                          # S3 has no folders: creating one would leave empty "dir/" objects behind
                          try_create_dir=local)
    if local:
        storage.publish_local_folder(target, manifest_dir)


def actor_device_type(config) -> str:
    """The torch device type the model actors run on: "cuda" when they get GPUs, else "cpu"."""
    return "cuda" if config.gpus_per_actor > 0 else "cpu"


def rows_per_model_call(config, input_size: int) -> int:
    """Images per Ray Data batch given to a model actor: the batch size when set, else enough rows for
    the largest batch the actor's measurement may pick on its device for the model's input size."""
    from pipelines.restore.model_runtime import auto_rows_per_call

    if config.batch_size:
        return config.batch_size
    return auto_rows_per_call(actor_device_type(config), input_size)


def rows_per_block(config, input_size: int) -> int:
    """Inputs per Ray Data block: as set, else twice the images of one model call (the batch size
    when set, else what the actor's measurement may fill for the model's input size). Small tiles get
    larger blocks: at 64² every block costs about as much scheduling and (de)serialising as the model
    spends on it (2,000 tiny images: 8-row blocks 18.1 images/s, 32-row blocks 28.1, docs/execution.md),
    while at 512² on CPU the block stays at 8 rows, what every stage reserves memory for."""
    if config.rows_per_block:
        return config.rows_per_block
    return 2 * rows_per_model_call(config, input_size)


def largest_batch(config, input_size: int) -> int:
    """Tiles per forward pass to plan memory for: the batch size when set, else the largest the actor's
    start-up measurement may pick on its device for the model's input size."""
    from pipelines.restore.model_runtime import batch_candidates

    if config.batch_size:
        return config.batch_size
    return max(batch_candidates(actor_device_type(config), input_size))


def execution_settings(config, planned_tiles: int):
    """How every model actor runs (precision, compile, batch size), from a restore config."""
    from pipelines.restore.model_runtime import ExecutionSettings

    return ExecutionSettings(precision=config.precision, compile=config.compile,
                             compile_cache_dir=config.compile_cache_dir, batch_size=config.batch_size,
                             planned_tiles=max(1, planned_tiles))


def _read_back(manifest_dir: storage.Location) -> tuple[dict[str, int], dict[str, float], dict[str, int],
                                                       dict[str, int]]:
    """Counts per status, summed stage times, inputs timed per stage and errors per kind: the only
    things the driver reads of the results."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    columns = ["status", "error_kind", "read_ms", "decode_ms", "model_ms", "encode_ms", "write_ms"]
    table = pads.dataset(manifest_dir.path, filesystem=manifest_dir.filesystem, format="parquet").to_table(
        columns=columns)
    counts = {status: int(pc.sum(pc.equal(table["status"], status)).as_py() or 0) for status in (OK, ERROR, SKIPPED,
                                                                                                  PENDING)}
    stage_ms = {name: round(float(pc.sum(table[name]).as_py() or 0.0), 1) for name in columns[2:]}
    stage_images = {name: int(pc.count(table[name]).as_py()) for name in columns[2:]}  # non-null: timed
    kinds = pc.value_counts(table["error_kind"].drop_null()).to_pylist()
    return ({k: v for k, v in counts.items() if v}, stage_ms, stage_images,
            {item["values"]: item["counts"] for item in kinds})


# ---------------------------------------------------------------- CLI

def add_parsers(sub) -> None:
    options.add_verb(sub, "restore", RestoreConfig, options.guarded("restore", run_config), section="restore",
                     help="restore a folder, an S3 prefix or a manifest of images on Ray Data",
                     description=__doc__.split("\n\n")[0])


def run_config(config: RestoreConfig) -> int:
    """The run's exit status (see the module's docstring); a failed run is EXIT_RUN_FAILED (options.guarded)."""
    summary = run(config)
    if summary.exit_status == EXIT_ERROR_RATE:
        print(f"ugpnet restore: {summary.failure}", file=sys.stderr)
    return summary.exit_status


# argparse Namespace → the validated config
config_from_args = partial(options.config_from_args, cls=RestoreConfig, section="restore")
