"""How the model runs on a device: precision, copies, the batch policy and the compile decision
(ugpnet.inference, ugpnet.compiled) and their use in the model actor (pipelines.restore.model_runtime)."""

import numpy as np
import pytest
import torch

import ugpnet
from pipelines.common.models import load_payload, resolve_model
from pipelines.restore.model_runtime import ExecutionSettings
from pipelines.restore.run import ConfigError, RestoreConfig
from pipelines.restore.stages import PENDING, ModelStage
from ugpnet.compiled import CompileRecord, CompileRecords, should_compile
from ugpnet.inference import (
    HostToDevice,
    PrecisionError,
    autocast,
    eight_bit_distance,
    measure_batch_sizes,
    pick_batch_size,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return ugpnet.save(ugpnet.build("tiny_denoise", seed=0), tmp_path_factory.mktemp("bundle") / "tiny_denoise")


# ---------------------------------------------------------------- batch policy

def test_the_policy_picks_the_least_time_per_image():
    assert pick_batch_size({1: 6.9, 2: 8.0, 4: 10.5}) == 1  # this machine's CPU at 512² (issue 11)
    assert pick_batch_size({1: 0.020, 2: 0.012, 4: 0.009, 8: 0.010}) == 4
    assert pick_batch_size({1: 0.5, 2: 0.5, 4: 0.5}) == 1  # a tie goes to the smaller batch


def test_a_pick_is_never_slower_per_image_than_batch_1():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = [1, *sorted(rng.choice([2, 4, 8, 16], size=rng.integers(0, 5), replace=False).tolist())]
        timings = {size: float(rng.uniform(0.1, 10.0)) for size in sizes}
        chosen = pick_batch_size(timings)
        assert timings[chosen] <= timings[1]
        assert timings[chosen] == min(timings.values())


def test_cpu_candidates_grow_only_for_small_tiles():
    from pipelines.restore.model_runtime import cpu_batch_candidates

    assert cpu_batch_candidates(512) == (1, 2, 4)  # at 512² batch 4 already loses on CPU (issue 11)
    assert cpu_batch_candidates(256) == (1, 2, 4, 8, 16)
    assert cpu_batch_candidates(64) == (1, 2, 4, 8, 16)  # capped at 16
    assert cpu_batch_candidates(1024) == (1,)


def test_the_policy_needs_batch_1_as_its_baseline():
    with pytest.raises(ValueError, match="batch size 1"):
        pick_batch_size({2: 1.0, 4: 0.5})


def _conv_forward():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    samples = torch.rand(16, 3, 32, 32)
    calls = []

    def forward_at(size):
        calls.append(size)
        return conv(samples[:size])

    return forward_at, calls


def test_measuring_stays_within_the_budget_of_small_runs():
    forward_at, calls = _conv_forward()
    with torch.inference_mode():
        timings = measure_batch_sizes(forward_at, CPU, planned_images=1, budget_fraction=0.05)
    # One image planned: measuring more would cost more than the run; only batch 1 runs (warm-up, timed).
    assert list(timings) == [1] and calls == [1, 1]
    assert pick_batch_size(timings) == 1


def test_measuring_a_large_run_tries_larger_batches():
    forward_at, calls = _conv_forward()
    with torch.inference_mode():
        timings = measure_batch_sizes(forward_at, CPU, candidates=(1, 2, 4, 8), planned_images=10**6,
                                      max_budget_s=30.0)
    assert len(timings) >= 2 and set(timings) <= {1, 2, 4, 8}
    measured = list(timings)
    assert measured == sorted(measured)
    # It stops at the first size slower than the best so far: every size before the last was no slower.
    for index, size in enumerate(measured[1:-1], start=1):
        assert timings[size] <= min(timings[earlier] for earlier in measured[:index])
    assert timings[pick_batch_size(timings)] <= timings[1]
    assert set(calls) == set(timings)


def test_a_batch_that_does_not_fit_ends_the_search():
    tried = []

    def forward_at(size):
        tried.append(size)
        if size >= 2:
            raise torch.OutOfMemoryError("CUDA out of memory (raised here as a device would)")
        return torch.zeros(size)

    timings = measure_batch_sizes(forward_at, CPU, candidates=(1, 2, 4, 8), planned_images=10**9)
    assert list(timings) == [1] and pick_batch_size(timings) == 1
    assert tried == [1, 1, 1, 1, 2]  # batch 1 warmed up and timed 3 times; 2 tried, failed; nothing larger


class _FakeClock:
    """time.perf_counter for ugpnet.inference, advanced only by the fake forward passes below."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _forward_on_a_busy_machine(clock, per_image: dict[int, float], disturbed: set[tuple[int, int]]):
    """forward_at(size) costing per_image[size] seconds an image, 3x that on the calls listed in
    `disturbed` as (size, nth call at that size): another process took the CPU during them."""
    seen: dict[int, int] = {}

    def forward_at(size):
        seen[size] = seen.get(size, 0) + 1
        slow = 3.0 if (size, seen[size]) in disturbed else 1.0
        clock.now += size * per_image[size] * slow

    return forward_at


@pytest.mark.parametrize("repeats, picked", [(1, 1), (None, 2)])
def test_the_batch_measurement_keeps_each_sizes_fastest_call(monkeypatch, repeats, picked):
    """Batch 2 is truly faster per image (0.8 s vs 1 s), but its first timed call (the 2nd call: the
    1st is its warm-up) was disturbed. One call per size (repeats=1, as before) picks batch 1; the
    default (the fastest of 3) picks batch 2."""
    import ugpnet.inference as inference

    clock = _FakeClock()
    monkeypatch.setattr(inference.time, "perf_counter", clock)
    forward_at = _forward_on_a_busy_machine(clock, {1: 1.0, 2: 0.8, 4: 1.2}, disturbed={(2, 2)})
    timings = measure_batch_sizes(forward_at, CPU, candidates=(1, 2, 4), planned_images=10**6,
                                  max_budget_s=1000.0, **({} if repeats is None else {"repeats": repeats}))
    assert pick_batch_size(timings) == picked
    assert timings[1] == 1.0


def test_the_actors_measurements_are_sized_by_the_tiles_ahead_not_the_images(tmp_path):
    """A 256² photo through a 64² model is many forward passes: the plan counts them (an unreadable
    input counts one), so the batch search and `--compile auto` see the work there is."""
    from PIL import Image

    from pipelines.common import storage
    from pipelines.restore import budget as restore_budget
    from pipelines.restore import memory as restore_memory
    from ugpnet.fitting import plan_fit
    from ugpnet.presets import get_preset

    preset = get_preset("tiny_denoise")
    for name, side in (("large.png", 256), ("small.png", 128)):
        Image.new("RGB", (side, side), (90, 120, 30)).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows = [{"input_uri": str(tmp_path / name), "status": "pending", "error": ""}
            for name in ("large.png", "small.png", "broken.png")]
    plan = restore_budget.plan_memory(
        rows, geometry=restore_memory.model_geometry(preset, 0), fit="tile", tile_overlap=None, outputs=1,
        batch_size=4, rows_per_block=8, actors=1, budget=2**40, node_memory=0, s3=storage.StorageSpec("local"))
    tiles = [plan_fit(side, side, input_size=preset.input_size, scale=preset.scale, policy="tile").num_tiles
             for side in (256, 128)]
    assert tiles[0] > tiles[1] > 1
    assert plan.tiles == sum(tiles) + 1


# ---------------------------------------------------------------- precision and copies

def test_fp16_is_refused_on_cpu_and_bf16_runs_there():
    with pytest.raises(PrecisionError, match="fp16 runs only on CUDA"):
        autocast("fp16", CPU)
    with pytest.raises(PrecisionError, match="one of fp32, bf16, fp16"):
        autocast("fp8", CPU)
    a, b = torch.rand(8, 8), torch.rand(8, 8)
    with autocast("bf16", CPU):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("fp32", CPU):
        assert (a @ b).dtype == torch.float32


def test_host_to_device_on_cpu_is_the_array_itself():
    copy_in = HostToDevice(CPU)
    array = np.random.default_rng(0).random((2, 3, 4, 4), dtype=np.float32)
    tensor = copy_in(array)
    assert not copy_in.pins and tensor.device == CPU
    assert np.shares_memory(tensor.numpy(), array)  # no copy, no pinned staging buffer on CPU
    assert torch.equal(tensor, torch.from_numpy(array))


def test_eight_bit_distance():
    reference = torch.full((1, 3, 4, 4), 100 / 255)
    assert eight_bit_distance(reference, reference) == {"relative_l2": 0.0, "max_abs_levels": 0.0,
                                                        "share_over_2_levels": 0.0}
    moved = reference.clone()
    moved[0, 0, 0, 0] = 1.0  # 100 → 255 levels
    moved[0, 1, 0, 0] = 102 / 255  # 2 levels: not over 2
    distance = eight_bit_distance(reference, moved)
    assert distance["max_abs_levels"] == 155.0 and distance["share_over_2_levels"] == 1 / 48
    assert distance["relative_l2"] == pytest.approx((155**2 + 2**2) ** 0.5 / (100 * 48**0.5))


# ---------------------------------------------------------------- compile decision

def test_auto_compiles_only_when_the_planned_work_pays_for_it():
    assert not should_compile("off", 10**6, 7.0, 80.0, 2.0)
    assert should_compile("on", 1, 7.0, 80.0, 2.0)
    # 2 x faster saves half of each image's 7 s: 23 images save 80.5 s > 80 s of compiling, 22 do not.
    assert should_compile("auto", 23, 7.0, 80.0, 2.0)
    assert not should_compile("auto", 22, 7.0, 80.0, 2.0)
    assert not should_compile("auto", 10**6, 7.0, 80.0, 1.0)  # no speed-up, never worth it
    with pytest.raises(ValueError, match="off, on, auto"):
        should_compile("yes", 1, 1.0, 1.0, 2.0)


def test_compile_records_are_kept_beside_the_cache(tmp_path):
    records = CompileRecords(tmp_path)
    default = records.get("tiny|fused|cpu|fp32|b1", "cpu")
    assert default.compile_seconds == 90.0 and default.speedup == 2.0
    records.put("tiny|fused|cpu|fp32|b1", CompileRecord(12.5, 1.7))
    assert CompileRecords(tmp_path).get("tiny|fused|cpu|fp32|b1", "cpu") == CompileRecord(12.5, 1.7)


# ---------------------------------------------------------------- config

@pytest.mark.parametrize(("field", "value"), [("precision", "fp64"), ("compile", "yes"), ("compile_cache_dir", 3)])
def test_a_bad_execution_field_is_named(field, value):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        RestoreConfig(input="in", output="out", **{field: value}).validate()


def test_the_config_choices_are_the_library_ones():
    import pipelines.common.shared_options
    import ugpnet.compiled
    import ugpnet.fitting
    import ugpnet.inference

    assert pipelines.common.shared_options.FIT_POLICIES == ugpnet.fitting.FIT_POLICIES
    assert pipelines.common.shared_options.PRECISIONS == ugpnet.inference.PRECISIONS
    assert pipelines.common.shared_options.COMPILE_MODES == ugpnet.compiled.COMPILE_MODES


def test_fp16_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="'precision'.*fp16 runs only on CUDA") as caught:
        RestoreConfig(input="in", output="out", precision="fp16").validate()
    assert caught.value.field == "precision"
    assert RestoreConfig(input="in", output="out", precision="fp16", gpus_per_actor=0.5).validate()
    assert RestoreConfig(input="in", output="out").validate().batch_size is None  # measured by default


def test_the_driver_hands_every_actor_its_execution_settings():
    from pipelines.restore.run import execution_settings, rows_per_model_call

    config = RestoreConfig(input="in", output="out", precision="bf16", compile="auto").validate()
    settings = execution_settings(config, planned_tiles=250)
    assert (settings.precision, settings.compile, settings.batch_size, settings.planned_tiles) == (
        "bf16", "auto", None, 250)
    assert rows_per_model_call(config, 512) == 4  # measured batch on CPU at 512²: up to 4 per call
    assert rows_per_model_call(config, 64) == 16  # small tiles: up to 16
    assert rows_per_model_call(RestoreConfig(input="in", output="out", gpus_per_actor=0.5).validate(), 512) == 8
    assert rows_per_model_call(RestoreConfig(input="in", output="out", batch_size=3).validate(), 64) == 3


def test_blocks_hold_two_model_calls_so_small_tiles_get_larger_blocks():
    from pipelines.restore.run import rows_per_block

    def config(**fields):
        return RestoreConfig(input="in", output="out", **fields).validate()

    assert rows_per_block(config(), 512) == 8  # CPU at 512²: as before
    assert rows_per_block(config(), 64) == 32  # small tiles: two calls of up to 16
    assert rows_per_block(config(gpus_per_actor=0.5), 64) == 16
    assert rows_per_block(config(batch_size=3), 64) == 6
    assert rows_per_block(config(batch_size=3, rows_per_block=5), 64) == 5  # as set


def test_restore_and_archive_flags_carry_precision_and_compile(tmp_path, capsys):
    from pipelines import cli
    from pipelines.restore.run import config_from_args

    args = cli.build_parser().parse_args(["restore", "--input", "in", "--output", "out", "--precision", "bf16",
                                          "--compile", "auto", "--compile-cache-dir", str(tmp_path)])
    config = config_from_args(args)
    assert (config.precision, config.compile, config.compile_cache_dir) == ("bf16", "auto", str(tmp_path))
    base = ["archive", "--source", str(tmp_path / "src"), "--dest", str(tmp_path / "dst"), "--state",
            str(tmp_path / "state"), "--model", "preset:tiny_denoise", "--dry-run"]
    assert cli.main([*base, "--precision", "fp16"]) == 2  # no GPU asked for: refused before any work
    assert "'restore.precision'" in capsys.readouterr().err


def test_evaluate_takes_a_precision_and_refuses_fp16_without_a_gpu():
    from pipelines.evaluate.run import EvaluateConfig

    common = dict(data="in", task="denoise", report="out")
    assert EvaluateConfig(**common, precision="bf16").validate().precision == "bf16"
    with pytest.raises(ConfigError, match="'precision'"):
        EvaluateConfig(**common, precision="fp64").validate()
    with pytest.raises(ConfigError, match="'precision'.*fp16 runs only on CUDA"):
        EvaluateConfig(**common, precision="fp16", gpus_per_actor=0).validate()


# ---------------------------------------------------------------- the model actor

def _pending_batch(count: int, size: int) -> dict:
    """`count` one-tile images (the fused stage's rows carry a canvas and its fit plan)."""
    from ugpnet.fitting import plan_fit

    canvases = np.random.default_rng(1).random((count, 3, size, size), dtype=np.float32)
    plan = plan_fit(size, size, input_size=size, scale=1, policy="tile").to_json()
    # input_uri: every real row has one (the model stage hands it to pipelines.common.fault_hooks)
    return {"canvas": list(canvases), "fit_plan": [plan] * count, "status": [PENDING] * count, "error": [""] * count,
            "input_uri": [f"/in/{index}.png" for index in range(count)]}


def test_the_actor_runs_the_model_exactly_and_measures_its_batch(tiny_bundle):
    payload = load_payload(resolve_model(str(tiny_bundle)))
    batch = _pending_batch(3, 64)
    # float32 transport: this checks the runner's arithmetic (the compact transport has its own test).
    auto = ModelStage(payload, "fused", None, 1, False, False,
                      execution=ExecutionSettings(planned_tiles=100), transport="float32")
    assert auto.batch_size in (1, 2, 4)
    fixed = ModelStage(payload, "fused", 2, 1, False, False, transport="float32")
    assert fixed.batch_size == 2
    model = ugpnet.load(str(tiny_bundle)).eval()
    with torch.inference_mode():
        expected = model(torch.from_numpy(np.stack(batch["canvas"])))
    for stage in (auto, fixed):
        out = stage(dict(batch))
        assert out["status"] == [PENDING] * 3
        got = np.stack(out["fused"])
        # Only summation order differs between batch sizes.
        assert np.linalg.norm(got - expected.numpy()) <= 1e-5 * np.linalg.norm(expected.numpy())


def test_the_actor_runs_bf16_close_to_fp32(tiny_bundle):
    payload = load_payload(resolve_model(str(tiny_bundle)))
    batch = _pending_batch(2, 64)
    outputs = {}
    for precision in ("fp32", "bf16"):
        stage = ModelStage(payload, "fused", 2, 1, False, False,
                           execution=ExecutionSettings(precision=precision, batch_size=2), transport="float32")
        outputs[precision] = np.stack(stage(dict(batch))["fused"])
    assert outputs["bf16"].dtype == np.float32
    distance = eight_bit_distance(torch.from_numpy(outputs["fp32"]), torch.from_numpy(outputs["bf16"]))
    assert 0 < distance["relative_l2"] < 0.05


def test_auto_leaves_a_small_run_uncompiled(tiny_bundle, tmp_path):
    payload = load_payload(resolve_model(str(tiny_bundle)))
    execution = ExecutionSettings(compile="auto", batch_size=1, planned_tiles=2, compile_cache_dir=str(tmp_path))
    stage = ModelStage(payload, "fused", None, 1, False, False, execution=execution)
    # Two images of a tiny model save far less than the 90 s a compile is estimated to cost.
    assert stage.runner.target is stage.model and stage.batch_size == 1
    assert not (tmp_path / "ugpnet-compile-records.json").exists()


@pytest.mark.slow
def test_compiling_keeps_the_outputs_and_fills_the_persistent_cache(tmp_path, monkeypatch):
    from ugpnet.compiled import compile_model, use_cache_dir

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE"):
        monkeypatch.setenv(name, "")  # restored after the test: the cache dir is this test's own
    monkeypatch.delenv("TORCHINDUCTOR_FX_GRAPH_CACHE")
    cache = use_cache_dir(tmp_path / "inductor")
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.LeakyReLU(0.2)).eval()
    inputs = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = module(inputs)
        compiled = compile_model(module)(inputs)
    torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-5)
    assert any(path.is_file() for path in cache.rglob("*"))  # later processes find the compiled kernels here
