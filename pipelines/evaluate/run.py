"""`ugpnet evaluate`: measure a model on clean test images, degraded here with the task's seeded
degradation at one or more strengths, and write a report.

    list clean images (driver) → read → decode → crop → degrade per strength     CPU tasks
                               → model (restored, synthesized, fused) + metrics   actor pool (GPU when present)
    metric rows → <report>/per_image.parquet, summary.json, report.html, grids/   driver
    registered model (models:/…) → an MLflow run linked to that version           driver (pipelines.evaluate.tracking)

Each image's degraded input depends only on `seed` and the image's key, so two runs (or two models)
see the same inputs. Metrics per output (the input itself — bicubic-enlarged for SR —, restored,
synthesized, fused): PSNR, SSIM, the high-frequency energy ratio against GT and its |log2| distance,
GMSD; LPIPS when the user gives its weights. Bad images become error rows; the run goes on.

Classical baselines (ugpnet.baselines: denoise OpenCV NLM, wavelet BayesShrink, BM3D given the true σ;
deblur unsharp mask, Wiener given the true kernel; SR PIL bicubic and Lanczos) run in the CPU tasks on
the very same degraded inputs and are measured like the model's outputs. On by default when their
packages import (otherwise a warning, and the report without them); `--baselines` makes them required
(missing packages: exit 2 naming the extra, before any work); `--no-baselines` turns them off.

Exit status: 0 when the report is written, 1 when no image could be evaluated or the run failed,
2 (the CLI's usual) for a bad configuration, caught before any work and naming the field.
"""

import json
import math
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial

from pipelines.common import logs, options, storage
from pipelines.common import shared_options as common
from pipelines.common.config_fields import (
    ConfigError,
    parse_extensions,
)
from pipelines.common.options import check_declared, option
from pipelines.evaluate.stages import BASE_METRICS, MIN_SIDE
from pipelines.evaluate.tracking import DEFAULT_EXPERIMENT
from ugpnet.tasks import TASK_SPECS, TASKS, get_task

EXTRA_METRICS = ("lpips", "fid")
EXIT_NOTHING_EVALUATED = 1
PER_IMAGE_FILE = "per_image.parquet"


@dataclass
class EvaluateConfig:
    """Everything an evaluation needs, each field declared once (pipelines.common.options)."""

    data: str = option(help="clean images: folder, s3://bucket/prefix, one image, or a .txt/.csv/.parquet manifest")
    task: str = option(choices=TASKS, help="the degradation the model is measured on")
    report: str = option(help="folder or s3://bucket/prefix for report.html, per_image.parquet, summary.json, grids/")
    model: str | None = common.model(None, default_text="default:<task>")
    strengths: tuple[float, ...] | None = option(
        None, unit="; ".join(f"{s.name}: {s.strength_label}" for s in TASK_SPECS.values()),
        default_text="; ".join(f"{s.name} {','.join(f'{v:g}' for v in s.default_strengths)}"
                               + (" only" if s.fixed_strengths else "") for s in TASK_SPECS.values()),
        help="comma-separated degradation strengths")
    seed: int = option(2024, minimum=0, unit="RNG seed", help="base seed of the degradations")
    crop: int = option(0, minimum=0, unit="px", default_text="0: whole image",
                       help=f"centre-crop clean images to at most this many pixels a side (0 or >= {MIN_SIDE})")
    fit: str = common.fit("tile")
    metrics: tuple[str, ...] = option((), help="extra metrics: lpips (needs --vgg16 and --lpips-heads); fid is not "
                                               "available")
    vgg16: str | None = option(None, help="torchvision VGG16 ImageNet state dict (vgg16-397923af.pth), for LPIPS")
    lpips_heads: str | None = option(None, help="LPIPS v0.1 VGG linear heads (lpips/weights/v0.1/vgg.pth)")
    grid_images: int = option(4, minimum=0, unit="images", help="images (first by key) shown as LQ | restored | "
                                                                "synthesized | fused | baselines | GT grids")
    grid_crop: int = option(192, minimum=MIN_SIDE, unit="px", help="ground-truth pixels per grid panel, centre "
                                                                   "square, 1:1")
    actors: int = option(1, minimum=1, unit="actors", help="model actors")
    batch_size: int = option(4, minimum=1, unit="tiles", help="model-size tiles per forward pass")
    precision: str = common.precision()
    gpus_per_actor: float | None = common.gpus_per_actor(None, "1 when the Ray cluster has GPUs, else 0")
    cpus_per_actor: float = common.cpus_per_actor()
    cpus_per_task: float = common.cpus_per_task()
    threads_per_actor: int = common.threads_per_actor()
    images_per_block: int = option(2, minimum=1, unit="images", help="clean images per Ray Data block")
    extensions: tuple[str, ...] = common.extensions()
    max_pixels: int = common.max_pixels()
    allow_local_manifest_paths: bool = common.allow_local_manifest_paths()
    baselines: bool | None = option(
        None, default_text="on when installed (pip install 'ugpnet[baselines]')",
        help="classical methods beside the model (denoise: OpenCV NLM, wavelet, BM3D given the true σ; deblur: "
             "unsharp mask, Wiener given the true kernel; sr: bicubic, Lanczos); --baselines requires them, "
             "--no-baselines skips them")
    tracking_uri: str | None = common.tracking_uri()
    experiment: str = common.experiment(DEFAULT_EXPERIMENT)

    def validate(self) -> "EvaluateConfig":
        """Check and normalise every field; raises ConfigError naming the first bad one."""
        for name in ("data", "task", "report"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(name, "is required (a non-empty string)")
        check_declared(self)
        if self.model is None:
            self.model = get_task(self.task).default_model
        if not self.model.strip():
            raise ConfigError("model", "must be a model reference (bundle dir, models:/..., default:TASK, preset:NAME)")
        self.strengths = self._strengths()
        if 0 < self.crop < MIN_SIDE:
            raise ConfigError("crop", f"must be 0 (whole image) or >= {MIN_SIDE} pixels, got {self.crop}")
        self.metrics = self._metrics()
        if self.gpus_per_actor is not None:
            _check_fp16(self)
        if self.cpus_per_actor == 0 and not self.gpus_per_actor:
            raise ConfigError("cpus_per_actor", "an actor with neither CPUs nor GPUs would oversubscribe the node")
        self.extensions = parse_extensions(self.extensions)
        for name in ("tracking_uri", "experiment"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ConfigError(name, f"must be a non-empty string, got {value!r}")
        self.baselines = self._baselines()
        return self

    def _baselines(self) -> bool:
        """Asked for (True) and a package missing: refused. Not asked (None): on when every package
        imports here, otherwise a warning and off, so a bare install still evaluates the model."""
        from ugpnet.baselines import INSTALL_HINT, missing_modules

        if self.baselines is not None and not isinstance(self.baselines, bool):
            raise ConfigError("baselines", f"must be true or false, got {self.baselines!r}")
        if self.baselines is False:
            return False
        missing = missing_modules(self.task)
        if missing and self.baselines:
            raise ConfigError("baselines", f"the {self.task} baselines need {', '.join(missing)}, which do not "
                                           f"import here: {INSTALL_HINT} (or --no-baselines)")
        if missing:
            print(f"ugpnet evaluate: warning: no classical baselines in this report: {', '.join(missing)} "
                  f"missing ({INSTALL_HINT}; --no-baselines silences this)", file=sys.stderr)
        return not missing

    @property
    def baseline_methods(self) -> tuple:
        """The ugpnet.baselines.Baseline entries this run evaluates (none when baselines are off)."""
        from ugpnet.baselines import baselines_for

        return tuple(baselines_for(self.task)) if self.baselines else ()

    @property
    def baseline_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.baseline_methods)

    def _strengths(self) -> tuple[float, ...]:
        if self.strengths is None:
            return get_task(self.task).default_strengths
        parts = str(self.strengths).split(",") if isinstance(self.strengths, str | int | float) else self.strengths
        try:
            values = tuple(float(str(part).strip()) for part in parts)
        except ValueError:
            raise ConfigError("strengths", f"must be comma-separated numbers, got {self.strengths!r}") from None
        if not values or any(not math.isfinite(v) or v < 0 for v in values):
            raise ConfigError("strengths", f"must be one or more finite numbers >= 0, got {self.strengths!r}")
        if len(set(values)) != len(values):
            raise ConfigError("strengths", f"has repeated values: {self.strengths!r}")
        task = get_task(self.task)
        if task.fixed_strengths and values != task.default_strengths:
            raise ConfigError("strengths", f"{task.name} is evaluated at the fixed ×{task.scale} downscale only; "
                                           f"got {self.strengths!r}")
        return tuple(sorted(values))

    def _metrics(self) -> tuple[str, ...]:
        """Extra metrics: LPIPS when asked for or when both of its files are given; never FID."""
        parts = str(self.metrics).split(",") if isinstance(self.metrics, str) else list(self.metrics)
        wanted = {str(p).strip().lower() for p in parts if str(p).strip()} - set(BASE_METRICS)
        unknown = wanted - set(EXTRA_METRICS)
        if unknown:
            raise ConfigError("metrics", f"unknown metric(s) {', '.join(sorted(unknown))}; {', '.join(BASE_METRICS)} "
                                         f"are always computed, extras are {', '.join(EXTRA_METRICS)}")
        if "fid" in wanted:
            raise ConfigError("metrics", "fid is not available: Inception-FID needs pretrained Inception weights, "
                                         "which this version cannot load; drop fid from metrics")
        if self.vgg16 or self.lpips_heads:
            wanted.add("lpips")
        if "lpips" in wanted:
            from ugpnet.vgg import MissingWeightsError, PerceptualWeights

            weights = PerceptualWeights(vgg16=self.vgg16, lpips_heads=self.lpips_heads)
            for name in ("vgg16", "lpips_heads"):
                try:
                    weights.require(name, "the LPIPS metric")
                except MissingWeightsError as err:
                    flag = "--" + name.replace("_", "-")
                    raise ConfigError(name, f"{err} (on the command line: {flag} PATH); LPIPS is never computed "
                                            f"with random weights") from None
        return tuple(sorted(wanted))

    @property
    def pool_sizes(self) -> dict[str, int]:  # what restore's resource check reads
        return {"evaluate": self.actors}

    @classmethod
    def from_mapping(cls, values: dict) -> "EvaluateConfig":
        return options.from_mapping(cls, values)

    def public_dict(self) -> dict:
        data = asdict(self)
        for name in ("strengths", "metrics", "extensions"):
            data[name] = list(getattr(self, name))
        return data


@dataclass
class EvaluateSummary:
    run_id: str
    images: int
    rows: int                 # images × strengths × outputs
    ok: int                   # (image, strength) pairs evaluated
    errors: int               # (image, strength) pairs that failed
    duration_s: float
    report: str               # report.html
    per_image: str            # per_image.parquet
    summary_path: str
    table: list               # one entry per (strength, output): means over the ok images
    comparisons: list         # per strength: what each module adds (see evaluate_report.compare)
    mlflow_run_id: str | None = None  # the MLflow run linked to the registered version (models:/ refs only)

    @property
    def exit_status(self) -> int:
        return 0 if self.ok else EXIT_NOTHING_EVALUATED


# ---------------------------------------------------------------- the run

def run(config: EvaluateConfig) -> EvaluateSummary:
    """Validate, plan on the driver, stream degrade → model → metrics through Ray Data, report."""
    from pipelines.common.models import ModelRefError, resolve_model
    from pipelines.restore.inputs import InputError, ManifestPolicy, list_inputs
    from pipelines.restore.run import refuse_entries_under

    started, started_at = time.perf_counter(), datetime.now(UTC)
    config.validate()
    run_id = f"{started_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    logs.bind(run_id=run_id)
    s3 = storage.s3_spec_from_env()
    report = _report_root(config.report, s3)
    try:
        source = storage.resolve(config.data, s3)
    except storage.StorageError as err:
        raise ConfigError("data", str(err)) from err
    try:
        storage.disjoint_roots(report, "report", {"data": source})
    except storage.StorageError as err:
        raise ConfigError("report", str(err)) from err
    if config.model.strip().startswith("models:/"):
        from pipelines.common.tracking import use_tracking

        use_tracking(config.tracking_uri)  # the registry the model comes from is where its evaluation goes
    try:
        model = resolve_model(config.model)
    except ModelRefError as err:
        raise ConfigError("model", str(err)) from err
    expected_scale = get_task(config.task).scale
    if model.scale != expected_scale:
        raise ConfigError("task", f"{config.task} needs a ×{expected_scale} model; {config.model} is ×{model.scale} "
                                  f"(preset {model.preset}, task {model.task})")
    if model.task != config.task:
        print(f"ugpnet evaluate: note: {config.model} was made for {model.task}, evaluated on {config.task}",
              file=sys.stderr)
    if "lpips" in config.metrics:
        _check_lpips_files(config)
    try:
        items, kind = list_inputs(source, extensions=config.extensions, s3=s3, exclude=report,
                                  policy=ManifestPolicy(allow_local_paths=config.allow_local_manifest_paths))
    except (InputError, OSError) as err:
        raise ConfigError("data", str(err)) from err
    if not items:
        raise ConfigError("data", f"no images ({', '.join(config.extensions)}) under {config.data}")
    if kind == "manifest":
        refuse_entries_under(report, "report", items, input_name="data")
    rows = [{"image": item.relative_key, "input_uri": item.input_uri, "status": "error" if item.error else "pending",
             "error": item.error, "grid": index < config.grid_images} for index, item in enumerate(items)]

    table = _execute(rows, config, model, report, s3, run_id)
    summary, context = _finish(table, config, model, report, run_id, len(rows), started, started_at)
    if model.registry_version and summary.ok:
        summary.mlflow_run_id = _log_to_registry(summary, context, config, model, report, rows)
    return summary


def _log_to_registry(summary, context, config, model, report, rows) -> str:
    from pipelines.evaluate.tracking import log_evaluation

    mlflow_run_id = log_evaluation(registry_version=model.registry_version, experiment=config.experiment,
                                   summary=summary, context=context, report=report,
                                   images=[row["image"] for row in rows])
    print(f"evaluate {summary.run_id}: logged as MLflow run {mlflow_run_id}, linked to {model.registry_version}",
          flush=True)
    return mlflow_run_id


def _report_root(uri: str, s3: storage.StorageSpec) -> storage.Location:
    try:
        report = storage.resolve(uri, s3)
        if storage.file_info(report).type == storage.pafs.FileType.File:
            raise ConfigError("report", f"{report.uri} is a file, not a folder")
    except storage.StorageError as err:
        raise ConfigError("report", str(err)) from err
    except OSError as err:
        raise ConfigError("report", f"cannot reach {uri}: {err}") from err
    return report


def _check_lpips_files(config: EvaluateConfig) -> None:
    """Load LPIPS once here, so a wrong file fails now, naming the field, not in every actor."""
    from ugpnet.vgg import LPIPS, MissingWeightsError, PerceptualWeights

    try:
        LPIPS(PerceptualWeights(vgg16=config.vgg16, lpips_heads=config.lpips_heads))
    except (MissingWeightsError, ValueError, RuntimeError) as err:
        text = str(err)
        raise ConfigError("lpips_heads" if "head" in text.lower() else "vgg16", text) from err


def _check_fp16(config: EvaluateConfig) -> None:
    if config.precision == "fp16" and config.gpus_per_actor == 0:
        raise ConfigError("precision", "fp16 runs only on CUDA and the model actors get no GPU; use bf16 or fp32")


def _check_reachable(config: EvaluateConfig, rows: list[dict], report: storage.Location) -> None:
    """Local data, report folder or LPIPS files the cluster's other nodes cannot see are refused."""
    from pipelines.common.cluster_paths import LocalPathError, check_local_paths, local_paths

    # Rows that are already errors (a local path an S3 manifest may not name) are never read.
    fields = {"data": next((r["input_uri"] for r in rows if not r["error"] and "://" not in r["input_uri"]), None),
              "report": report.uri if report.spec.scheme == "local" else None,
              "vgg16": config.vgg16, "lpips_heads": config.lpips_heads}
    try:
        check_local_paths(local_paths(fields, outputs=("report",)))
    except LocalPathError as err:
        raise ConfigError(err.field, err.reason) from err


def _execute(rows, config: EvaluateConfig, model, report, s3, run_id):
    import pyarrow as pa
    import ray

    from pipelines.common.cluster import check_resources, coarse_actor_memory, ensure_ray
    from pipelines.common.models import load_payload
    from pipelines.evaluate.stages import METRIC_SCHEMA, EvalSettings, EvaluateModel, read_decode_degrade

    started_ray = ensure_ray()
    try:
        if config.gpus_per_actor is None:  # GPU when present
            config.gpus_per_actor = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        _check_fp16(config)
        _check_reachable(config, rows, report)
        check_resources(config, coarse_actor_memory(model))
        settings = EvalSettings(
            run_id=run_id, task=config.task, strengths=config.strengths, seed=config.seed, crop=config.crop,
            scale=model.scale, fit=config.fit, batch_size=config.batch_size, max_pixels=config.max_pixels,
            with_lpips="lpips" in config.metrics, vgg16=config.vgg16, lpips_heads=config.lpips_heads,
            grid_crop=config.grid_crop, report_root=report, s3=s3, model_ref=config.model,
            model_version=model.model_version, precision=config.precision, baselines=config.baseline_names)
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / config.images_per_block)))
        dataset = dataset.map_batches(read_decode_degrade, fn_kwargs={"settings": settings}, batch_size=None,
                                      batch_format="numpy", num_cpus=config.cpus_per_task)
        dataset = dataset.map_batches(
            EvaluateModel, fn_constructor_kwargs=dict(
                payload_ref=ray.put(load_payload(model)), settings=settings, use_gpu=config.gpus_per_actor > 0,
                threads=config.threads_per_actor or max(1, math.ceil(config.cpus_per_actor))),
            batch_size=None, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=config.actors),
            num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor or None,
            # The memory reservation also keeps Ray from fusing the CPU stage into the model actors.
            memory=coarse_actor_memory(model))
        # Metric rows are a few hundred bytes each: the only results that come back to the driver.
        tables = [t for t in ray.get(list(dataset.to_arrow_refs())) if t.num_rows]
        return pa.concat_tables(tables).cast(METRIC_SCHEMA) if tables else METRIC_SCHEMA.empty_table()
    finally:
        if started_ray:
            ray.shutdown()


def _finish(table, config, model, report, run_id, images, started,
            started_at) -> tuple[EvaluateSummary, dict]:
    """Writes per_image.parquet, report.html and summary.json; returns the summary and the report's context."""
    import io

    import pyarrow.parquet as pq

    from pipelines.evaluate import report as evaluate_report
    from pipelines.evaluate.stages import describe_degradation, output_names

    outputs = output_names(config.baseline_names)
    expected = images * len(config.strengths) * len(outputs)
    if table.num_rows != expected:
        raise RuntimeError(f"the evaluation returned {table.num_rows} rows for {expected} (images × strengths × "
                           f"outputs)")
    table = table.sort_by([("image", "ascending"), ("strength", "ascending")])
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(report.child(PER_IMAGE_FILE), buffer.getvalue())

    rows = table.to_pylist()
    metrics = [*BASE_METRICS, *config.metrics]
    baselines = [{"name": b.name, "blind": b.blind, "how": b.how} for b in config.baseline_methods]
    aggregate = evaluate_report.aggregate(rows, metrics, outputs)
    comparisons = evaluate_report.compare(aggregate, tuple(b["name"] for b in baselines if b["blind"]))
    fused_rows = [r for r in rows if r["output"] == "fused"]
    ok = sum(r["status"] == "ok" for r in fused_rows)
    context = {
        "run_id": run_id, "task": config.task, "data": config.data, "model": model.describe(),
        "strength_label": get_task(config.task).strength_label, "strengths": list(config.strengths),
        "degradations": {f"{s:g}": json.loads(describe_degradation(config.task, s)) for s in config.strengths},
        "seed": config.seed, "crop": config.crop, "fit": config.fit, "metrics": metrics, "images": images,
        "ok": ok, "errors": len(fused_rows) - ok, "started_at": started_at.isoformat(),
        "outputs": list(outputs), "baselines": baselines}
    page = evaluate_report.html_page(context, aggregate, comparisons, rows, read=storage.read_bytes, root=report)
    storage.write_bytes(report.child("report.html"), page.encode("utf-8"))
    duration = time.perf_counter() - started
    summary = EvaluateSummary(
        run_id=run_id, images=images, rows=table.num_rows, ok=ok, errors=len(fused_rows) - ok,
        duration_s=round(duration, 3), report=report.child("report.html").uri,
        per_image=report.child(PER_IMAGE_FILE).uri, summary_path=report.child("summary.json").uri,
        table=aggregate, comparisons=comparisons)
    record = {**asdict(summary), **context, "finished_at": datetime.now(UTC).isoformat(),
              "config": config.public_dict()}
    # Written before (and logged as an artifact of) the MLflow run, which finds it by its tag ugpnet.evaluate_run.
    record.pop("mlflow_run_id")
    storage.write_bytes(report.child("summary.json"), json.dumps(record, indent=2, default=str).encode())
    print(evaluate_report.text_table(aggregate, metrics, get_task(config.task).strength_label), flush=True)
    print(f"evaluate {run_id}: {ok} of {len(fused_rows)} image×strength evaluated ({summary.errors} errors) in "
          f"{duration:.1f} s; report {summary.report}", flush=True)
    return summary, context


# ---------------------------------------------------------------- CLI

def add_parsers(sub) -> None:
    options.add_verb(sub, "evaluate", EvaluateConfig, options.guarded("evaluate", run_config), section="evaluate",
                     help="measure a model on degraded clean images; write an HTML report",
                     description=__doc__.split("\n\n")[0])


def run_config(config: EvaluateConfig) -> int:
    summary = run(config)  # a failed run: exit status 1 (options.guarded)
    if summary.exit_status:
        print("ugpnet evaluate: no image could be evaluated (see the error rows in the report)", file=sys.stderr)
    return summary.exit_status


# argparse Namespace → the validated config
config_from_args = partial(options.config_from_args, cls=EvaluateConfig, section="evaluate")
