"""The memory estimates of pipelines/restore/memory.py held to peaks measured on the real stages.

Each measurement runs in a fresh process (a peak RSS only grows): import and warm up, note
its peak RSS (VmHWM), run one stage of pipelines/restore/stages.py on a real photo (scikit-image's `coffee`,
600×400, as JPEG), note the peak again. The estimate must cover the measured rise and stay
within a small factor of it (an estimate that reserves far too much wastes the cluster).
"""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import ugpnet
from pipelines.restore import memory as restore_memory
from pipelines.restore.memory import ModelGeometry, estimate_image

MEASURE = r"""
import json, sys
import numpy as np
from pipelines.common import storage
from pipelines.restore.stages import ModelStage, StageSettings, _decode_and_fit, _encode_and_write_one
from ugpnet.fitting import FitPlan, plan_fit

args = json.loads(sys.argv[1])
data = open(args["image"], "rb").read()
settings = StageSettings(run_id="m", model_ref="m", model_version="v", output_root=storage.resolve(args["out"]),
                         s3=storage.s3_spec_from_env(), input_size=args["input_size"], scale=args["scale"], fit="tile",
                         tile_overlap=None, max_pixels=10**9, max_output_pixels=10**12, ext="png", quality=95,
                         save_intermediate=False, transport=args.get("transport", "compact"))
def peak():
    # VmHWM, not ru_maxrss: execve keeps ru_maxrss from the parent, so under a large test process
    # the child's "peak" would start at the parent's size and the rise would read 0.
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
if args["stage"] == "decode":
    _decode_and_fit(open(args["warmup"], "rb").read(), settings)
    before = peak()
    canvas, alpha, plan, _ = _decode_and_fit(data, settings)
else:
    canvas, alpha, plan, _ = _decode_and_fit(data, settings)
if args["stage"] == "decode":
    pass
elif args["stage"] == "model":
    payload = {"config": open(args["bundle"] + "/ugpnet.json").read(),
               "weights": open(args["bundle"] + "/model.safetensors", "rb").read()}
    stage = ModelStage(payload, "fused", batch_size=args["batch_size"], threads=1, use_gpu=False,
                       keep_intermediate=False, transport=settings.transport)
    rows, size = args["rows"], args["input_size"]
    one_tile = plan_fit(size, size, input_size=size, scale=args["scale"], policy="tile").to_json()
    batch = {"status": np.array(["pending"] * rows), "error": np.array([""] * rows),
             "input_uri": np.array([f"i{n}" for n in range(rows)]), "canvas": [canvas[:, :size, :size].copy()] * rows,
             "fit_plan": [one_tile] * rows}
    stage(batch)  # warm-up on one tile per row
    batch["canvas"], batch["fit_plan"] = [canvas.copy() for _ in range(rows)], [plan] * rows
    before = peak()
    stage(batch)
else:
    fit = FitPlan.from_json(plan)
    # The assembled image as fused mode ships it; float32, the estimates' upper bound for compact.
    image = np.random.default_rng(0).random((3, fit.height * fit.scale, fit.width * fit.scale), dtype=np.float32)
    batch = {"fused": [image], "alpha": [alpha], "fit_plan": [plan]}
    row = {"output_rel": "o.png", "input_uri": "i", "stale_markers": "[]", "fit_plan": plan,
           "marker": "_ugpnet/done/o.png.json", "marker_body": "{}"}
    before = peak()
    _encode_and_write_one(batch, 0, row, settings.output_root.child("o.png"), settings)
print(json.dumps({"rise": peak() - before, "tiles": FitPlan.from_json(plan).num_tiles, "plan": plan}))
"""


@pytest.fixture(scope="module")
def coffee(tmp_path_factory):
    from skimage import data

    root = tmp_path_factory.mktemp("coffee")
    photo = data.coffee()
    # large.jpg: the photo enlarged to 3000×2000, so that decoding it rises well above the
    # process's import-time peak (600×400 decodes within it).
    large = np.asarray(Image.fromarray(photo).resize((3000, 2000), Image.Resampling.BICUBIC))
    for name, image in (("coffee.jpg", photo), ("warmup.jpg", photo[:40, :60]), ("crop.jpg", photo[100:180, 200:320]),
                        ("large.jpg", large)):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=92)
        (root / name).write_bytes(buffer.getvalue())
    return root


def measure(stage: str, root, **args) -> dict:
    args = {"stage": stage, "image": str(root / args.pop("image", "coffee.jpg")), "warmup": str(root / "warmup.jpg"),
            "out": str(root / f"out-{stage}"), **args}
    done = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(args)], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def geometry(preset: str, weights_bytes: int = 0) -> ModelGeometry:
    model = ugpnet.build(preset, seed=0)
    return restore_memory.model_geometry(model.preset, weights_bytes)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("stage", "preset", "image", "size"), [("decode", "tiny_denoise", "large.jpg", (3000, 2000)),
                                                               ("encode", "tiny_sr_x8", "coffee.jpg", (600, 400))])
def test_decode_and_encode_estimates_cover_the_measured_peak(coffee, stage, preset, image, size):
    geo = geometry(preset)
    measured = measure(stage, coffee, input_size=geo.input_size, scale=geo.scale, image=image)
    estimate = estimate_image(*size, geometry=geo, fit="tile", tile_overlap=None,
                              file_bytes=(coffee / image).stat().st_size)
    assert estimate.tiles == measured["tiles"]
    predicted = estimate.decode if stage == "decode" else estimate.encode
    print(f"{stage}: measured rise {measured['rise'] / 2**20:.0f} MiB, estimate {predicted / 2**20:.0f} MiB")
    assert measured["rise"] <= predicted <= 3 * measured["rise"], (measured["rise"], predicted)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_model_actor_estimate_covers_a_measured_batch(coffee, tmp_path):
    bundle = ugpnet.save(ugpnet.build("tiny_sr_x8", seed=0), tmp_path / "tiny")
    geo = geometry("tiny_sr_x8", (bundle / "model.safetensors").stat().st_size)
    measured = measure("model", coffee, input_size=geo.input_size, scale=geo.scale, bundle=str(bundle), rows=2,
                       batch_size=4, image="crop.jpg",  # 120×80: a few hundred tiles, quick on one thread
                       transport="float32")  # the estimates assume float32 rows: an upper bound for compact
    image = estimate_image(120, 80, geometry=geo, fit="tile", tile_overlap=None, file_bytes=0)
    # The actor's own share: what it holds for 2 rows plus one forward's activations.
    reserved = restore_memory.actor_memory(geo, 2, image.model) - restore_memory.ACTOR_BASE_MEMORY \
        - restore_memory.ACTOR_WEIGHT_COPIES * geo.weights_bytes
    print(f"model: measured rise {measured['rise'] / 2**20:.0f} MiB, estimate {reserved / 2**20:.0f} MiB")
    # A rise this small is noisy (the allocator reuses the warm-up's pages): a looser upper factor.
    assert measured["rise"] <= reserved <= 6 * measured["rise"], (measured["rise"], reserved)


def test_refusal_names_the_numbers_and_the_limit_follows_the_scale():
    sr, denoise = geometry("tiny_sr_x8"), geometry("tiny_denoise")
    budget = 8 * restore_memory.GiB
    photo_24mpx = dict(fit="tile", tile_overlap=None, file_bytes=8 << 20)
    refused = restore_memory.refusal(estimate_image(6000, 4000, geometry=sr, **photo_24mpx), budget, sr)
    assert refused and "6000x4000 -> 48000x32000 (x8" in refused and "budget of 8.00 GiB" in refused
    assert restore_memory.refusal(estimate_image(6000, 4000, geometry=denoise, **photo_24mpx), budget, denoise) \
        is None
    # The same budget admits an x8 input 64 times smaller in pixels, roughly: the limit follows the scale.
    assert restore_memory.refusal(estimate_image(750, 500, geometry=sr, **photo_24mpx), budget, sr) is None


def test_header_size_reads_only_the_start_of_a_file(coffee):
    data = (coffee / "coffee.jpg").read_bytes()
    assert restore_memory.header_size(data[:restore_memory.HEADER_BYTES]) == (600, 400)
    assert restore_memory.header_size(b"not an image") is None
    assert np.asarray(Image.open(coffee / "coffee.jpg")).shape == (400, 600, 3)


def _restore_in_process(data: bytes, bundle, transport: str, module_chain: tuple[str, ...], tmp_path):
    """decode → model stage(s) → encode, the real stage functions without Ray; returns the 8-bit
    output and the bytes that crossed each stage boundary (what the object store would carry)."""
    from pipelines.common import storage
    from pipelines.restore.stages import ModelStage, StageSettings, _decode_and_fit, _encode_and_write_one

    model = ugpnet.load(str(bundle))
    settings = StageSettings(run_id="t", model_ref="t", model_version="v", output_root=storage.resolve(str(tmp_path)),
                             s3=storage.s3_spec_from_env(), input_size=model.preset.input_size,
                             scale=model.preset.scale, fit="tile", tile_overlap=None, max_pixels=10**9,
                             max_output_pixels=None, ext="png", quality=95, save_intermediate=False,
                             transport=transport, stages="fused" if module_chain == ("fused",) else "split")
    pixels, alpha, plan, _ = _decode_and_fit(data, settings)
    payload = {"config": (bundle / "ugpnet.json").read_text(), "weights": (bundle / "model.safetensors").read_bytes()}
    batch = {"status": np.array(["pending"]), "error": np.array([""]), "input_uri": np.array(["i"]),
             "fit_plan": [plan], "canvas" if module_chain == ("fused",) else "tiles": [pixels]}
    shipped = pixels.nbytes
    for module in module_chain:
        batch = ModelStage(payload, module, batch_size=8, threads=1, use_gpu=False, keep_intermediate=False,
                           transport=transport)(batch)
        shipped += sum(batch[name][0].nbytes for name in batch if name in
                       ("restored", "restoration_feature", "synthesized", "synthesis_feature", "fused"))
    batch.update(alpha=[alpha])
    row = {"output_rel": f"{transport}.png", "input_uri": "i", "stale_markers": "[]", "fit_plan": plan,
           "marker": f"_ugpnet/done/{transport}.png.json", "marker_body": "{}"}
    _encode_and_write_one(batch, 0, row, settings.output_root.child(row["output_rel"]), settings)
    # The bench's 12 Mpx figures come from this formula: it must be the real arrays' bytes.
    from ugpnet.fitting import FitPlan

    assert shipped == restore_memory.shipped_bytes(FitPlan.from_json(plan), restore_memory.model_geometry(
        model.preset, 0), transport, settings.stages)
    return np.asarray(Image.open(tmp_path / row["output_rel"])).astype(int), shipped


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("preset", ["tiny_sr_x8", "tiny_denoise"])
def test_compact_transport_moves_half_the_bytes_and_changes_8_bit_outputs_by_at_most_one_level(coffee, tmp_path,
                                                                                               preset):
    bundle = ugpnet.save(ugpnet.build(preset, seed=0), tmp_path / preset)
    data = (coffee / ("crop.jpg" if preset == "tiny_sr_x8" else "coffee.jpg")).read_bytes()
    for modules in (("fused",), ("restoration", "synthesis", "fusion")):
        old, old_bytes = _restore_in_process(data, bundle, "float32", modules, tmp_path)
        new, new_bytes = _restore_in_process(data, bundle, "compact", modules, tmp_path)
        difference = np.abs(new - old)
        print(f"{preset} {'+'.join(modules)}: bytes through stages per image {old_bytes / 2**20:.1f} MiB -> "
              f"{new_bytes / 2**20:.1f} MiB; 8-bit outputs: max abs diff {difference.max()}, "
              f"{(difference > 0).mean() * 100:.3f}% of samples differ")
        assert difference.max() <= 1
        if modules == ("fused",):  # its assembled images travel as their 8-bit levels: nothing lost
            assert difference.max() == 0
        # Split mode's float32 features dominate its bytes; only its RGB images shrink.
        assert new_bytes <= 0.5 * old_bytes if modules == ("fused",) else new_bytes < old_bytes
