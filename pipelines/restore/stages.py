"""The Ray Data stages of `ugpnet restore`: read → decode → fit (CPU tasks) → model (actor pools)
→ assemble → encode → write (CPU tasks). They live in the package because Ray workers must be able
to import them.

Every row is one input and carries `status`: `pending` rows are worked on; `error` and `skipped`
rows pass through every stage untouched, so each input reaches the manifest exactly once. A stage
that fails on one input turns that row into an `error` row with the stage name and the reason.

Between stages an image travels with its `FitPlan` (JSON), and the alpha plane (H,W) float32 in
[0,1] rides along untouched. How its pixels travel depends on the stage mode:

- fused (one pool runs every module): the read stage ships the fitted canvas (3,canvas_h,canvas_w)
  once; the model actor cuts tiles from it batch_size at a time, as one stream over the rows of its
  batch (small one-tile images still share a forward pass), blends each output chunk into that
  image's `FitAssembler` at once and ships the assembled image(s) (3,H*k,W*k); the write stage only
  encodes. No full tile set exists anywhere: at ×8 a 12 Mpx photo is thousands of tiles, and the
  tiles overlap, so the tile set is larger than the image (in and out) and was held several times.
- split (a pool per module): the rows carry model-size tiles (N,3,s,s), outputs (N,3,S,S)
  (S = s*scale) and the features F_R and F_G (N,C,S,S) between the pools, and the write stage blends.
  Features exist per tile by nature (the fusion of tile i needs F_R and F_G of tile i), so a pool can
  hand the next one nothing smaller than a tile set; split trades that transport for a pool per module.

With the `compact` transport (the default) input pixels travel as uint16 (value * 65535: exact for
8- and 16-bit sources, whose floats are samples / 255 or / 65535, and within 1/131070 for resampled
canvases); fused mode's assembled images as their output 8-bit levels (assembled_dtype: lossless);
split mode's output tiles and features as float32 (SPLIT_OUTPUT_DTYPE). `float32` is the transport of old, kept
to measure against.
"""

import json
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from pipelines.common import fault_hooks, storage
from pipelines.common.error_kinds import (
    CORRUPT,
    ENCODE,
    FENCED,
    SIZE,
    WRITE,
    classify_read_error,
    error_text,
    kind_of_stage,
)
from pipelines.restore.fence import FENCE_STAGE, Fence

PENDING, OK, ERROR, SKIPPED = "pending", "ok", "error", "skipped"
MODULES = ("restoration", "synthesis", "fusion")
TRANSPORTS = ("compact", "float32")
TILE_LEVELS = 65535  # uint16 tiles: value = round(x * TILE_LEVELS)
READ_THREADS = 8  # concurrent GETs per read task: S3 latency, not CPU, bounds reading
INTERMEDIATE_DIR = "_intermediate"

MANIFEST_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("input_uri", pa.string()),
    ("output_uri", pa.string()),
    ("status", pa.string()),           # ok | error | skipped
    ("error", pa.string()),            # "<stage>: <reason>" for errors, else null
    ("error_kind", pa.string()),       # why, for errors (pipelines.common.error_kinds): corrupt, access_denied, …
    ("model_ref", pa.string()),
    ("model_version", pa.string()),
    ("width", pa.int32()),             # input pixels, after EXIF orientation
    ("height", pa.int32()),
    ("out_width", pa.int32()),
    ("out_height", pa.int32()),
    ("source_format", pa.string()),
    ("source_mode", pa.string()),
    ("has_alpha", pa.bool_()),
    ("tiles", pa.int32()),             # model-size tiles the fit cut the image into
    ("bytes_in", pa.int64()),
    ("bytes_out", pa.int64()),
    ("read_ms", pa.float64()),
    ("decode_ms", pa.float64()),       # decode + fit
    ("model_ms", pa.float64()),        # this input's share of its model batches, all modules
    ("encode_ms", pa.float64()),       # assemble + encode
    ("write_ms", pa.float64()),
    ("duration_ms", pa.float64()),     # sum of the above: the work this input cost
    ("finished_at", pa.timestamp("ms", tz="UTC")),  # when this row's outcome was decided
])


@dataclass(frozen=True)
class StageSettings:
    """Everything the CPU stages need; picklable and free of secrets."""

    run_id: str
    model_ref: str
    model_version: str
    output_root: storage.Location
    s3: storage.StorageSpec
    input_size: int
    scale: int
    fit: str
    tile_overlap: int | None
    max_pixels: int
    max_output_pixels: int | None
    ext: str
    quality: int
    save_intermediate: bool
    transport: str = "compact"  # one of TRANSPORTS
    stages: str = "fused"  # fused: the rows carry the canvas; split: its tiles (see the module docstring)
    strip_metadata: bool = False  # True: outputs get no ICC profile and no EXIF
    fence: Fence | None = None  # asked before a block's reads and writes (pipelines/restore/fence.py)


# ---------------------------------------------------------------- read, decode, fit (CPU task)

def read_decode_fit(batch: dict, settings: StageSettings) -> dict:
    import ugpnet.fitting  # noqa: F401  (imported before any timing: the first import takes seconds)
    import ugpnet.images  # noqa: F401

    rows = _rows(batch)
    if not rows:
        return batch
    _apply_fence(rows, settings)
    pending = [i for i, row in enumerate(rows) if row["status"] == PENDING]
    with ThreadPoolExecutor(max_workers=max(1, min(READ_THREADS, len(pending)))) as pool:
        reads = dict(zip(pending, pool.map(lambda i: _timed_read(rows[i]["input_uri"], settings.s3), pending),
                         strict=True))
    column = pixels_column(settings.stages)
    empty_pixels = np.zeros((3, 0, 0) if column == "canvas" else (0, 3, settings.input_size, settings.input_size),
                            tile_dtype(settings.transport))
    out = {key: [] for key in (*rows[0].keys(), column, "alpha", "fit_plan", "width", "height", "source_format",
                               "source_mode", "bytes_in", "read_ms", "decode_ms", *METADATA_COLUMNS)}
    for index, row in enumerate(rows):
        pixels, alpha, plan, info = empty_pixels, np.zeros((0, 0), np.float32), "", {}
        if index in reads:
            data, read_ms, read_error, read_kind = reads[index]
            info["read_ms"] = read_ms
            if read_error:
                row["status"], row["error"], row["error_kind"] = ERROR, f"read: {read_error}", read_kind
            else:
                info["bytes_in"] = len(data)
                started = time.perf_counter()
                try:
                    pixels, alpha, plan, decoded_info = _decode_and_fit(data, settings, output_format(row))
                    info.update(decoded_info)
                except Exception as err:  # every failure becomes this row's error, never the job's
                    stage = getattr(err, "stage", "decode")
                    row["status"], row["error"] = ERROR, f"{stage}: {error_text(err)}"
                    row["error_kind"] = SIZE if stage == "fit" else CORRUPT
                    info.update(getattr(err, "info", {}))
                info["decode_ms"] = (time.perf_counter() - started) * 1000
        for key, value in row.items():
            out[key].append(value)
        out[column].append(pixels)
        out["alpha"].append(alpha)
        out["fit_plan"].append(plan)
        for key in ("width", "height", "bytes_in"):
            out[key].append(int(info.get(key, -1)))
        for key in ("source_format", "source_mode"):
            out[key].append(str(info.get(key, "")))
        for key in ("read_ms", "decode_ms"):
            out[key].append(float(info.get(key, 0.0)))
        out["out_bits"].append(int(info.get("out_bits", 8)))
        for key in ("icc_profile", "exif"):
            out[key].append(bytes(info.get(key, b"")))
    return out


# What the read stage passes on to the encoder about each input besides its pixels: the output's bit
# depth (16 for a 16-bit input written as PNG or TIFF), and the ICC profile and EXIF to embed.
METADATA_COLUMNS = ("out_bits", "icc_profile", "exif")


def output_format(row: dict) -> str:
    """The format an input's output is written in: its output key's extension (restore_inputs.output_key
    gives every key one), so `--ext auto` needs no column of its own."""
    return posixpath.splitext(row["output_rel"])[1].lstrip(".").lower()


def _timed_read(uri: str, s3: storage.StorageSpec) -> tuple[bytes, float, str, str]:
    """(bytes, milliseconds, error text, error kind); the error parts are empty on success."""
    started = time.perf_counter()
    try:
        data = storage.read_bytes(storage.resolve(uri, s3))
        return data, (time.perf_counter() - started) * 1000, "", ""
    except Exception as err:
        return b"", (time.perf_counter() - started) * 1000, error_text(err), classify_read_error(err)


class _StageError(Exception):
    def __init__(self, stage: str, message: str, info: dict):
        super().__init__(message)
        self.stage, self.info = stage, info


def pixels_column(stages: str) -> str:
    """The column the read stage ships an image's pixels in: fused mode's model actor cuts the tiles
    itself, split mode's restoration pool takes them cut."""
    return "canvas" if stages == "fused" else "tiles"


def _decode_and_fit(data: bytes, settings: StageSettings, out_format: str = "png"):
    """(pixels, alpha, plan JSON, info); pixels: the packed canvas (3,canvas_h,canvas_w) in fused
    mode, its tiles (N,3,s,s) in split mode. `out_format` (an output extension) decides out_bits."""
    import torch

    from ugpnet.fitting import cut_tiles, plan_fit, prepare_canvas
    from ugpnet.images import DEEP_FORMATS, OUTPUT_FORMATS, decode_image

    decoded = decode_image(data, max_pixels=settings.max_pixels)
    info = {"width": decoded.width, "height": decoded.height, "source_format": decoded.source_format,
            "source_mode": decoded.source_mode,
            "out_bits": 16 if decoded.bit_depth == 16 and OUTPUT_FORMATS.get(out_format) in DEEP_FORMATS else 8}
    if not settings.strip_metadata:
        info["icc_profile"], info["exif"] = decoded.metadata.icc_profile, decoded.metadata.exif
    out_pixels = decoded.width * decoded.height * settings.scale ** 2
    if settings.max_output_pixels is not None and out_pixels > settings.max_output_pixels:
        raise _StageError("fit", f"output would be {decoded.width * settings.scale}x{decoded.height * settings.scale}"
                                 f" = {out_pixels / 1e6:.4g} Mpx, over the limit of "
                                 f"{settings.max_output_pixels / 1e6:.4g} Mpx", info)
    try:
        plan = plan_fit(decoded.height, decoded.width, input_size=settings.input_size, scale=settings.scale,
                        policy=settings.fit, tile_overlap=settings.tile_overlap)
    except ValueError as err:
        raise _StageError("fit", str(err), info) from err
    image = torch.from_numpy(decoded.rgb).permute(2, 0, 1).unsqueeze(0)
    canvas = prepare_canvas(image, plan)
    if settings.stages == "fused":
        pixels = pack_tiles(canvas[0].contiguous().numpy(), settings.transport)
    else:
        pixels = pack_tiles(cut_tiles(canvas, plan).contiguous().numpy(), settings.transport)
    alpha = decoded.alpha if decoded.alpha is not None else np.zeros((0, 0), np.float32)
    return pixels, alpha, plan.to_json(), info


def tile_dtype(transport: str):
    return np.uint16 if transport == "compact" else np.float32


def pack_tiles(tiles: np.ndarray, transport: str) -> np.ndarray:
    """float32 [0,1] tiles or canvas → what travels to the model stage."""
    if transport != "compact":
        return tiles
    return np.rint(np.clip(tiles, 0.0, 1.0) * np.float32(TILE_LEVELS)).astype(np.uint16)


# How split mode's output tiles and features travel, under both transports. The features (as float16
# they moved outputs by up to 2 levels) dominate split's bytes anyway (64+ channels against 3), and
# float16 RGB tiles, blended after rounding, left 0.2-2 % of the 8-bit samples one level off; as
# float32 the blend is the fused path's, so both modes write the same bytes under both transports.
# Fused mode ships assembled images instead (assembled_dtype).
SPLIT_OUTPUT_DTYPE = np.float32


# Fused mode under `compact` ships an image whose output is 16-bit (METADATA_COLUMNS' out_bits) as
# its 16-bit levels in this column instead of "fused" (a column holds one dtype); the encoder takes
# whichever of the two is not empty.
DEEP_COLUMN = "fused16"


def assembled_dtype(transport: str):
    """How fused mode's assembled images travel to the encoder. Under `compact`: as the 8-bit levels
    the encoder writes (ugpnet.images.quantize_to_uint8 of the float32 blend), so nothing is lost at
    the output's 8 bits (float16 moved up to 0.8 % of the samples by one level), at a quarter of the
    float32 bytes; the encoder writes those levels as they are."""
    return np.uint8 if transport == "compact" else np.float32


# ---------------------------------------------------------------- model stages (actor pools)

class ModelStage:
    """One actor of a model pool. `module` is `fused` (restoration → synthesis → fusion in one
    actor) or one of MODULES (split mode: a pool per module, features passed in the rows)."""

    def __init__(self, payload_ref, module: str, batch_size: int, threads: int, use_gpu: bool,
                 keep_intermediate: bool, execution=None, transport: str = "compact"):
        import ray
        import torch

        from pipelines.common.logs import project_info_in_worker
        from pipelines.common.models import payload_model
        from pipelines.restore.model_runtime import ExecutionSettings, ModuleRunner

        if module not in ("fused", *MODULES):
            raise ValueError(f"unknown model module {module!r}")
        project_info_in_worker()  # the batch and compile decisions below are logged at INFO
        # The object store hands every actor the same bytes: one copy per node, no shared disk needed.
        payload = ray.get(payload_ref) if isinstance(payload_ref, ray.ObjectRef) else payload_ref
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, threads))
        self.model = payload_model(payload, self.device)
        del payload  # the weights now live in the module; the bytes are not needed again
        self.module, self.keep_intermediate = module, keep_intermediate
        self.transport = transport
        generator, size = self.model.synmodule.generator, self.model.preset.resolution
        # Shapes of the empty arrays that error/skipped rows carry in each output column.
        self._empty = {"restoration_feature": (0, self.model.preset.restoration_feature_channels, size, size),
                       "synthesis_feature": (0, generator.channels[generator.out_size], size, size)}
        # Fused mode ships assembled images (3,H,W); split mode ships tiles (N,3,S,S).
        self._empty_image = (3, 0, 0) if module == "fused" else (0, 3, size, size)
        # Release the modules this actor does not run, so a split pool holds only its own weights.
        if module != "fused":
            keep = {"restoration": "resmodule", "synthesis": "synmodule", "fusion": "fusmodule"}[module]
            for name in ("resmodule", "synmodule", "fusmodule"):
                if name != keep:
                    setattr(self.model, name, None)
        execution = execution or ExecutionSettings(batch_size=batch_size)
        self.runner = ModuleRunner(self.model, module, self.device, execution, self._input_shapes(),
                                   keep_intermediate)
        self.batch_size = self.runner.batch_size

    def _input_shapes(self) -> list[tuple[int, ...]]:
        """Per-tile shapes of this module's inputs (in _INPUTS order), for start-up measurements."""
        preset = self.model.preset
        tile = (3, preset.input_size, preset.input_size)
        if self.module in ("fused", "restoration"):
            return [tile]
        if self.module == "synthesis":
            return [self._empty_image[1:]]
        return [self._empty["synthesis_feature"][1:], self._empty["restoration_feature"][1:]]

    # Which row columns a module reads and writes.
    _INPUTS = {"fused": ("canvas",), "restoration": ("tiles",), "synthesis": ("restored",),
               "fusion": ("synthesis_feature", "restoration_feature")}

    def _outputs(self) -> tuple[str, ...]:
        if self.module == "fused":
            return ("fused", "restored", "synthesized") if self.keep_intermediate else ("fused",)
        return {"restoration": ("restored", "restoration_feature"),
                "synthesis": ("synthesized", "synthesis_feature"), "fusion": ("fused",)}[self.module]

    def _deep_outputs(self) -> tuple[str, ...]:
        return (DEEP_COLUMN,) if self.module == "fused" else ()

    def _dropped(self) -> tuple[str, ...]:
        """Columns no later stage needs."""
        if self.module == "fused":
            return ("canvas",)
        if self.module == "restoration":
            return ("tiles",)
        if self.module == "synthesis":
            return () if self.keep_intermediate else ("restored",)
        dropped = ("synthesis_feature", "restoration_feature")
        return dropped if self.keep_intermediate else (*dropped, "synthesized")

    def _run(self, *inputs):
        # The runner's outputs are float32 (SPLIT_OUTPUT_DTYPE) unless told otherwise.
        return self.runner.run(*(np.ascontiguousarray(x) for x in inputs), unpack=_unpack)

    def __call__(self, batch: dict) -> dict:
        statuses = list(batch["status"])
        pending = [i for i, status in enumerate(statuses) if status == PENDING]
        out_names = self._outputs()
        per_row = {name: [None] * len(statuses) for name in (*out_names, *self._deep_outputs())}
        model_ms = [float(x) for x in batch.get("model_ms", np.zeros(len(statuses)))]
        errors = list(batch["error"])
        failures = self._run_rows(batch, pending, per_row, model_ms)
        for i, err in failures.items():
            statuses[i], errors[i] = ERROR, f"model ({self.module}): {error_text(err)}"
        out = {key: value for key, value in batch.items() if key not in self._dropped()}
        for name in out_names:
            dtype = assembled_dtype(self.transport) if self.module == "fused" else SPLIT_OUTPUT_DTYPE
            empty = np.zeros(self._empty_shape(name), dtype)
            out[name] = [value if value is not None else empty for value in per_row[name]]
        for name in self._deep_outputs():
            empty = np.zeros(self._empty_image, np.uint16)
            out[name] = [value if value is not None else empty for value in per_row[name]]
        out["status"], out["error"], out["model_ms"] = statuses, errors, model_ms
        return out

    def _run_rows(self, batch: dict, rows: list[int], per_row: dict, model_ms: list[float]) -> dict:
        """Run the rows together; when that raises, run each row alone, so that one image the model
        cannot run fails alone and its batch-mates still get their outputs. Returns {row: error}."""
        if not rows:
            return {}
        try:
            self._run_together(batch, rows, per_row, model_ms)
            return {}
        except Exception as err:  # a batch the model cannot run: find which of its rows is at fault
            if len(rows) == 1:
                return {rows[0]: err}
        failures = {}
        for i in rows:
            try:
                self._run_together(batch, [i], per_row, model_ms)
            except Exception as err:
                failures[i] = err
        return failures

    def _run_together(self, batch: dict, rows: list[int], per_row: dict, model_ms: list[float]) -> None:
        """The model over all tiles of `rows` in chunks of batch_size; fills per_row and model_ms
        only when every chunk succeeded."""
        if self.module == "fused":
            self._stream_together(batch, rows, per_row, model_ms)
        else:
            self._run_tile_sets(batch, rows, per_row, model_ms)

    def _stream_together(self, batch: dict, rows: list[int], per_row: dict, model_ms: list[float]) -> None:
        """Fused: the tiles of `rows` as one stream, cut from each row's canvas batch_size at a time,
        each output chunk blended into its image's assemblers (one per output column) at once. An
        image is finished, in its transport dtype, as soon as its last tile is in, so at most the
        images of one chunk have an accumulator; the blend is `assemble`'s, tile for tile."""
        import torch

        from ugpnet.fitting import FitPlan, cut_tiles

        out_names = self._outputs()
        plans = {i: FitPlan.from_json(batch["fit_plan"][i]) for i in rows}
        bits = batch.get("out_bits")  # absent: every output is 8-bit
        deep = {i for i in rows if bits is not None and int(bits[i]) == 16}
        started = time.perf_counter()
        fault_hooks.before_model([batch["input_uri"][i] for i in rows])
        canvases, assemblers, finished = {}, {}, {}
        with torch.inference_mode():
            for chunk in tile_chunks([(i, plans[i].num_tiles) for i in rows], self.batch_size):
                for i, _, _ in chunk:
                    if i not in canvases:
                        canvases[i] = _canvas_tensor(batch["canvas"][i])
                tiles = torch.cat([cut_tiles(canvases[i], plans[i], first, count) for i, first, count in chunk])
                # float32 back from the runner: outputs are rounded to the transport once, after the blend.
                outputs = self.runner.run(tiles.numpy(), unpack=_unpack, out_dtypes=[torch.float32] * len(out_names))
                offset = 0
                for i, first, count in chunk:
                    images = assemblers.setdefault(i, [_assembler(plans[i]) for _ in out_names])
                    for assembler, output in zip(images, outputs, strict=True):
                        assembler.add(torch.from_numpy(output[offset:offset + count]))
                    offset += count
                    if first + count == plans[i].num_tiles:
                        finished[i] = [self._finished(assembler, deep=name == "fused" and i in deep)
                                       for name, assembler in zip(out_names, assemblers.pop(i), strict=True)]
                        del canvases[i]
        elapsed_ms = (time.perf_counter() - started) * 1000
        total = max(1, sum(plan.num_tiles for plan in plans.values()))
        for i in rows:
            model_ms[i] += elapsed_ms * plans[i].num_tiles / total
            for name, image in zip(out_names, finished[i], strict=True):
                per_row[DEEP_COLUMN if image.dtype == np.uint16 else name][i] = image

    def _finished(self, assembler, deep: bool) -> np.ndarray:
        """An image's blended output (3,H*k,W*k) in the dtype assembled images travel in (every
        output column alike: only the encoder reads them); `deep`: a 16-bit output, whose 16-bit
        levels travel under `compact` (DEEP_COLUMN)."""
        from ugpnet.images import quantize_to_uint8, quantize_to_uint16

        image = assembler.result()[0].numpy()
        if assembled_dtype(self.transport) == np.uint8:
            # elementwise: the (3,H,W) layout is kept
            return quantize_to_uint16(image) if deep else quantize_to_uint8(image)
        return np.ascontiguousarray(image)

    def _run_tile_sets(self, batch: dict, rows: list[int], per_row: dict, model_ms: list[float]) -> None:
        """Split mode: the rows carry tile sets in and out (the features exist per tile)."""
        import torch

        in_names, out_names = self._INPUTS[self.module], self._outputs()
        counts = [len(batch[in_names[0]][i]) for i in rows]
        stacked = [np.concatenate([batch[name][i] for i in rows]) for name in in_names]
        started = time.perf_counter()
        fault_hooks.before_model([batch["input_uri"][i] for i in rows])
        with torch.inference_mode():
            chunks = [self._run(*(s[first:first + self.batch_size] for s in stacked))
                      for first in range(0, len(stacked[0]), self.batch_size)]
        outputs = [np.concatenate([c[k] for c in chunks]) if chunks else None for k in range(len(out_names))]
        elapsed_ms = (time.perf_counter() - started) * 1000
        total = max(1, sum(counts))
        offset = 0
        for i, count in zip(rows, counts, strict=True):
            model_ms[i] += elapsed_ms * count / total
            for name, output in zip(out_names, outputs, strict=True):
                if output is not None:
                    per_row[name][i] = output[offset:offset + count]
            offset += count

    def _empty_shape(self, name: str) -> tuple[int, ...]:
        return self._empty.get(name, self._empty_image)


def tile_chunks(tile_counts: list[tuple[int, int]], size: int):
    """Chunks of `size` tiles (the last may be smaller) over the rows' tiles in order, rows
    (row, tiles) following each other in one stream: each chunk a list of (row, first tile, count)."""
    chunk, room = [], size
    for row, tiles in tile_counts:
        first = 0
        while first < tiles:
            count = min(room, tiles - first)
            chunk.append((row, first, count))
            first, room = first + count, room - count
            if room == 0:
                yield chunk
                chunk, room = [], size
    if chunk:
        yield chunk


def _canvas_tensor(canvas: np.ndarray):
    """A row's canvas (3,H,W) as a (1,3,H,W) tensor on the same memory. Ray hands the actor the
    object store's read-only pages; nothing writes to them (cut_tiles copies the tiles out with
    torch.cat), so torch's warning about non-writable arrays, once per actor in its log, is noise."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(np.ascontiguousarray(canvas)).unsqueeze(0)


def _assembler(plan):
    from ugpnet.fitting import FitAssembler

    return FitAssembler(plan)


def _unpack(tensor):
    """A received input in the model's float32: uint16 tiles back to [0,1] (on the device, so a GPU
    copy moves 2 bytes a sample); float32 passes as it is."""
    import torch

    if tensor.dtype == torch.uint16:
        return tensor.to(torch.float32).div_(TILE_LEVELS)
    return tensor.float()


# ---------------------------------------------------------------- assemble, encode, write (CPU task)

def encode_and_write(batch: dict, settings: StageSettings) -> pa.Table:
    rows = _rows(batch)
    if not rows:
        return MANIFEST_SCHEMA.empty_table()
    columns = {field.name: [] for field in MANIFEST_SCHEMA}
    _apply_fence(rows, settings)
    for index, row in enumerate(rows):
        record = {"out_width": None, "out_height": None, "bytes_out": None, "encode_ms": None, "write_ms": None}
        output = settings.output_root.child(row["output_rel"]) if row["output_rel"] else None
        if row["status"] == PENDING:
            try:
                record.update(_encode_and_write_one(batch, index, row, output, settings))
                row["status"], row["error"] = OK, ""
            except _StageError as err:
                row["status"], row["error"] = ERROR, f"{err.stage}: {err}"
                row["error_kind"] = WRITE if err.stage == "write" else ENCODE
                record.update(err.info)
        has_alpha = row.get("alpha") is not None and np.asarray(row["alpha"]).size > 0
        values = {
            "run_id": settings.run_id, "input_uri": row["input_uri"],
            "output_uri": output.uri if output is not None and row["status"] in (OK, SKIPPED) else None,
            "status": row["status"], "error": row["error"] or None,
            "error_kind": (row.get("error_kind") or kind_of_stage(row["error"])) if row["status"] == ERROR else None,
            "model_ref": settings.model_ref,
            "model_version": settings.model_version,
            "width": _maybe(row.get("width")), "height": _maybe(row.get("height")),
            "source_format": row.get("source_format") or None, "source_mode": row.get("source_mode") or None,
            "has_alpha": has_alpha if row["status"] != SKIPPED else None,
            "tiles": _tile_count(row["fit_plan"]) if row["status"] == OK else None,
            "bytes_in": _maybe(row.get("bytes_in")),
            "read_ms": row.get("read_ms"), "decode_ms": row.get("decode_ms"), "model_ms": row.get("model_ms"),
            **record,
        }
        if row["status"] == SKIPPED:
            for key in ("read_ms", "decode_ms", "model_ms"):
                values[key] = None
        stage_ms = [values[k] for k in ("read_ms", "decode_ms", "model_ms", "encode_ms", "write_ms")]
        values["duration_ms"] = float(sum(v for v in stage_ms if v)) if row["status"] != SKIPPED else None
        values["finished_at"] = datetime.now(UTC)
        for name in columns:
            columns[name].append(values.get(name))
    return pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)


def _apply_fence(rows: list[dict], settings: StageSettings) -> None:
    """A run whose fence refuses does no more work: the block's pending rows become `fenced` errors."""
    if settings.fence is None or not any(row["status"] == PENDING for row in rows):
        return
    reason = settings.fence.refusal()
    if reason is None:
        return
    for row in rows:
        if row["status"] == PENDING:
            row["status"], row["error"], row["error_kind"] = ERROR, f"{FENCE_STAGE}: {reason}", FENCED


def _tile_count(plan_json: str) -> int:
    from ugpnet.fitting import FitPlan

    return FitPlan.from_json(plan_json).num_tiles


def _output_rgb(array, plan) -> np.ndarray:
    """A model output column's value as the (H,W,3) image encode_image takes: fused mode ships it
    assembled (3,H,W), under `compact` as its 8-bit levels, which go to the encoder as they are (no
    float round trip); split mode ships the tiles (N,3,S,S), blended here."""
    import torch

    from ugpnet.fitting import assemble

    if np.asarray(array).dtype in (np.uint8, np.uint16):
        return np.asarray(array).transpose(1, 2, 0)
    # np.array copies: Arrow-backed buffers are read-only and torch warns on them.
    values = torch.from_numpy(np.array(array, dtype=np.float32))
    image = values if values.dim() == 3 else assemble(values, plan)[0]
    return image.permute(1, 2, 0).numpy()


def _output_pixels(batch: dict, column: str, index: int):
    """A row's image in `column`, or for the fused output its 16-bit levels when they travelled apart."""
    if column == "fused" and DEEP_COLUMN in batch and np.asarray(batch[DEEP_COLUMN][index]).size:
        return batch[DEEP_COLUMN][index]
    return batch[column][index]


def _encode_and_write_one(batch: dict, index: int, row: dict, output: storage.Location,
                          settings: StageSettings) -> dict:
    from ugpnet.fitting import FitPlan
    from ugpnet.image_metadata import ImageMetadata
    from ugpnet.images import encode_image, resize_alpha

    started = time.perf_counter()
    files = {output: "fused"}
    if settings.save_intermediate:
        for name in ("restored", "synthesized"):
            files[settings.output_root.child(f"{INTERMEDIATE_DIR}/{name}/{row['output_rel']}")] = name
    try:
        plan = FitPlan.from_json(row["fit_plan"])
        alpha = np.asarray(batch["alpha"][index])
        metadata = ImageMetadata(icc_profile=row.get("icc_profile") or b"", exif=row.get("exif") or b"")
        encoded = {}
        for location, column in files.items():
            main = column == "fused"  # intermediates are 8-bit previews, whatever the input's depth
            rgb = _output_rgb(_output_pixels(batch, column, index), plan)
            if alpha.size and alpha.shape != rgb.shape[:2]:
                alpha = resize_alpha(alpha, rgb.shape[1], rgb.shape[0])
            encoded[location] = encode_image(rgb, alpha=alpha if alpha.size else None, fmt=output_format(row),
                                             quality=settings.quality, metadata=metadata,
                                             bit_depth=int(row.get("out_bits") or 8) if main else 8)
        out_height, out_width = rgb.shape[:2]
    except Exception as err:
        raise _StageError("encode", error_text(err), {"encode_ms": (time.perf_counter() - started) * 1000}) from err
    encode_ms = (time.perf_counter() - started) * 1000
    info = {"out_width": out_width, "out_height": out_height, "bytes_out": len(encoded[output]),
            "encode_ms": encode_ms}
    started = time.perf_counter()
    try:
        # Stale markers first (they describe bytes about to be replaced), then the intermediates, the
        # output, and the done-marker last: a marker implies the output holds what it describes.
        for stale in json.loads(row["stale_markers"] or "[]"):
            storage.delete_if_exists(settings.output_root.child(stale))
        for location in sorted(encoded, key=lambda loc: loc == output):
            storage.write_bytes(location, encoded[location])
        body = {**json.loads(row["marker_body"]), "run_id": settings.run_id, "bytes_read": row.get("bytes_in"),
                "written_at": datetime.now(UTC).isoformat()}
        storage.write_bytes(settings.output_root.child(row["marker"]), json.dumps(body).encode())
    except Exception as err:
        info["write_ms"] = (time.perf_counter() - started) * 1000
        raise _StageError("write", error_text(err), info) from err
    info["write_ms"] = (time.perf_counter() - started) * 1000
    return info


# ---------------------------------------------------------------- helpers

def _rows(batch: dict) -> list[dict]:
    """Light (non-array) columns of a numpy-format batch, one dict per row."""
    names = [name for name in batch if name not in _HEAVY]
    count = len(batch["status"])
    return [{name: _plain(batch[name][i]) for name in names} for i in range(count)]


_HEAVY = {"canvas", "tiles", "restored", "synthesized", "fused", DEEP_COLUMN, "restoration_feature",
          "synthesis_feature"}


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def _maybe(value):
    return None if value is None or value == -1 else int(value)
