"""`ugpnet evaluate` on real photos with tiny fresh models (`preset:tiny_*`) on the module's local Ray.

What is checked against independent computations: the degraded input's PSNR (numpy on the 8-bit
arrays), the restored image's PSNR (the model run in this process), the strength-0 identity case
(PSNR inf, SSIM 1, HF ratio 1, GMSD 0), the SR input (bicubic enlargement of the ×8-smaller LQ) and
the classical baselines (each recomputed here on the degraded input: they saw exactly the model's).
"""

import base64
import html
import io
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from evaluate_samples import CROP, centre_crop_u8, numpy_psnr, write_photos
from PIL import Image

import ugpnet
from pipelines import cli
from pipelines.common.models import resolve_model
from pipelines.evaluate.run import EvaluateConfig, run
from pipelines.evaluate.stages import OUTPUTS, output_names
from ugpnet.baselines import baselines_for, run_baseline
from ugpnet.degradations import NAMED_DEGRADATIONS, Degradation, DegradationRecord, degrade, sample_seed
from ugpnet.tasks import evaluation_degradation as task_degradation

pytest_plugins = ["services"]


@pytest.fixture(scope="module", autouse=True)
def preset_cache(tmp_path_factory):
    """`preset:NAME` bundles are cached; keep this module's out of the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UGPNET_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three real photos (scikit-learn's two and matplotlib's Grace Hopper) and one corrupt file,
    named so that it sorts last (the first images get the grids)."""
    folder = write_photos(tmp_path_factory.mktemp("photos"))
    (folder / "zz_corrupt.jpg").write_bytes(b"<html>not an image</html>")
    return folder


def degraded_u8(gt_u8: np.ndarray, task: str, strength: float, seed: int, index: int) -> np.ndarray:
    gt = torch.from_numpy(gt_u8.transpose(2, 0, 1).astype(np.float32) / 255)
    lq = degrade(gt, task_degradation(task, strength), sample_seed(seed, index))
    return np.round(lq.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)


# ---------------------------------------------------------------- no Ray: degradations and config errors

def test_task_degradations_match_the_named_evaluation_settings():
    assert task_degradation("denoise", 25) == NAMED_DEGRADATIONS["denoise_sigma25"]
    assert task_degradation("denoise", 50) == NAMED_DEGRADATIONS["denoise_sigma50"]
    assert task_degradation("deblur", 2) == NAMED_DEGRADATIONS["deblur_gaussian_sigma2"]
    assert task_degradation("sr", 8) == NAMED_DEGRADATIONS["sr_bicubic_x8"]
    assert task_degradation("denoise", 0) == task_degradation("deblur", 0) == Degradation()


@pytest.mark.parametrize("flags, field, words", [
    (["--task", "blur"], "task", "denoise, deblur, sr"),
    (["--task", "denoise", "--strengths", "15,abc"], "strengths", "numbers"),
    (["--task", "denoise", "--strengths", "-5"], "strengths", ">= 0"),
    (["--task", "sr", "--strengths", "4"], "strengths", "×8"),
    (["--task", "denoise", "--crop", "8"], "crop", ">= 16"),
    (["--task", "denoise", "--metrics", "fid"], "metrics", "Inception"),
    (["--task", "denoise", "--metrics", "niqe"], "metrics", "unknown"),
    (["--task", "denoise", "--metrics", "lpips"], "vgg16", "--vgg16"),
])
def test_bad_config_exits_2_naming_the_field(flags, field, words, photos, tmp_path, capsys):
    status = cli.main(["evaluate", "--model", "preset:tiny_denoise", "--data", str(photos),
                       "--report", str(tmp_path / "report"), *flags])
    err = capsys.readouterr().err
    assert status == 2
    assert f"config field '{field}'" in err and words in err, err
    assert not (tmp_path / "report").exists()  # nothing was done


def test_lpips_needs_both_files_and_never_random_weights(tmp_path):
    from perceptual_fixtures import write_perceptual_weights

    weights = write_perceptual_weights(tmp_path)
    config = EvaluateConfig(data=str(tmp_path), task="denoise", report=str(tmp_path / "r"), vgg16=weights.vgg16)
    with pytest.raises(ValueError, match="config field 'lpips_heads'.*LPIPS v0.1.*--lpips-heads"):
        config.validate()
    config = EvaluateConfig(data=str(tmp_path), task="denoise", report=str(tmp_path / "r"), vgg16=weights.vgg16,
                            lpips_heads=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="config field 'lpips_heads'.*does not exist"):
        config.validate()
    config = EvaluateConfig(data=str(tmp_path), task="denoise", report=str(tmp_path / "r"), vgg16=weights.vgg16,
                            lpips_heads=weights.lpips_heads).validate()
    assert config.metrics == ("lpips",)  # given both files, LPIPS is measured without being asked


def test_model_task_and_data_are_checked_before_any_work(photos, tmp_path):
    with pytest.raises(ValueError, match="config field 'task': sr needs a ×8 model.*×1"):
        run(EvaluateConfig(data=str(photos), task="sr", report=str(tmp_path / "r"), model="preset:tiny_denoise"))
    with pytest.raises(ValueError, match="config field 'model'"):
        run(EvaluateConfig(data=str(photos), task="denoise", report=str(tmp_path / "r"), model=str(tmp_path)))
    with pytest.raises(ValueError, match="config field 'data'.*does not exist"):
        run(EvaluateConfig(data=str(tmp_path / "nowhere"), task="denoise", report=str(tmp_path / "r"),
                           model="preset:tiny_denoise"))
    assert not (tmp_path / "r").exists()


def test_stages_in_process_deblur_identity_blur_and_model_errors(photos, tmp_path):
    """The two Ray Data stages called directly (no Ray): deblur at σ 0 and 2 through the tiny deblurring
    model; a fit the model refuses turns that image's rows into `model:` error rows."""
    from dataclasses import replace

    from pipelines.common import storage
    from pipelines.common.models import load_payload
    from pipelines.evaluate.stages import EvalSettings, EvaluateModel, read_decode_degrade, seed_index

    model = resolve_model("preset:tiny_deblur")
    settings = EvalSettings(run_id="t", task="deblur", strengths=(0.0, 2.0), seed=7, crop=CROP, scale=1, fit="tile",
                            batch_size=4, max_pixels=10**8, with_lpips=False, vgg16=None, lpips_heads=None,
                            grid_crop=32, report_root=storage.resolve(str(tmp_path / "r")),
                            s3=storage.s3_spec_from_env(), model_ref=model.ref, model_version=model.model_version)
    batch = {"image": np.array(["flower.png"]), "input_uri": np.array([str(photos / "flower.png")]),
             "status": np.array(["pending"]), "error": np.array([""]), "grid": np.array([True])}
    degraded = read_decode_degrade(batch, settings)
    assert degraded["strength"] == [0.0, 2.0] and degraded["status"] == ["pending"] * 2
    stage = EvaluateModel(load_payload(model), settings, use_gpu=False, threads=1)
    rows = stage(degraded).to_pylist()
    assert [(r["strength"], r["output"], r["status"]) for r in rows] == [
        (s, o, "ok") for s in (0.0, 2.0) for o in OUTPUTS]
    gt = centre_crop_u8(photos / "flower.png")
    blurred = degraded_u8(gt, "deblur", 2.0, 7, seed_index("flower.png"))
    assert rows[4]["psnr"] == pytest.approx(numpy_psnr(blurred, gt), abs=1e-4) and rows[4]["psnr"] < 40
    assert rows[0]["psnr"] == math.inf and rows[4]["hf_ratio"] < 0.5  # blur removes most high frequencies
    assert Image.open(tmp_path / "r" / "grids" / "flower.png@2.png").size == (5 * 32 + 8, 32)

    strict = replace(settings, fit="error", crop=80)  # the tiny model takes exactly 64×64
    rows = EvaluateModel(load_payload(model), strict, use_gpu=False, threads=1)(
        read_decode_degrade(batch, strict)).to_pylist()
    assert len(rows) == 8 and {r["status"] for r in rows} == {"error"}
    assert all(r["error"].startswith("model: ") and "64" in r["error"] for r in rows)


# ---------------------------------------------------------------- end to end on Ray

@pytest.mark.integration
@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(400)
def test_denoise_report_metrics_grids_and_error_rows(photos, tmp_path, capsys):
    report = tmp_path / "report"
    status = cli.main(["evaluate", "--model", "preset:tiny_denoise", "--data", str(photos), "--task", "denoise",
                       "--report", str(report), "--strengths", "25,0", "--crop", str(CROP), "--grid-images", "2"])
    out = capsys.readouterr().out
    assert status == 0
    images = sorted(p.name for p in photos.iterdir())
    assert images == ["china.png", "flower.png", "grace_hopper.jpg", "zz_corrupt.jpg"]

    rows = pq.read_table(report / "per_image.parquet").to_pylist()
    keys = [(r["image"], r["strength"], r["output"]) for r in rows]
    baselines = [b.name for b in baselines_for("denoise")]  # on by default: the extra is installed here
    assert baselines == ["opencv nlm", "wavelet BayesShrink", "bm3d (true σ)"]
    outputs = output_names(tuple(baselines))
    assert sorted(keys) == sorted((i, s, o) for i in images for s in (0.0, 25.0) for o in outputs)
    by_key = dict(zip(keys, rows, strict=True))

    # The corrupt file: one error row per strength and output, with the stage and the reason; the run went on.
    corrupt = [r for r in rows if r["image"] == "zz_corrupt.jpg"]
    assert {r["status"] for r in corrupt} == {"error"} and all(r["error"].startswith("decode:") for r in corrupt)
    assert all(r["psnr"] is None for r in corrupt)
    good = [r for r in rows if r["image"] != "zz_corrupt.jpg"]
    assert {r["status"] for r in good} == {"ok"} and {(r["width"], r["height"]) for r in good} == {(CROP, CROP)}

    # Strength 0 is the identity: the input is the ground truth.
    for image in images[:3]:
        identity = by_key[(image, 0.0, "input")]
        assert identity["psnr"] == math.inf and identity["ssim"] == pytest.approx(1.0)
        assert identity["hf_ratio"] == pytest.approx(1.0) and identity["gmsd"] == pytest.approx(0.0, abs=1e-9)

    # σ = 25: the input's PSNR and the restored image's PSNR, recomputed here from the files.
    model = ugpnet.load(resolve_model("preset:tiny_denoise").bundle_dir).eval()
    for image in images[:3]:
        row = by_key[(image, 25.0, "input")]
        gt = centre_crop_u8(photos / image)
        lq = degraded_u8(gt, "denoise", 25.0, 2024, row["seed_index"])
        assert row["psnr"] == pytest.approx(numpy_psnr(lq, gt), abs=1e-4)
        assert 19.0 < row["psnr"] < 23.0  # σ 25 of 255 is about 20.2 dB before clipping
        with torch.inference_mode():
            restored = model.restore(torch.from_numpy(lq.transpose(2, 0, 1) / 255).float(), fit="tile",
                                     return_all=True).restored
        restored_u8 = np.round(restored.clamp(0, 1).numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
        assert by_key[(image, 25.0, "restored")]["psnr"] == pytest.approx(numpy_psnr(restored_u8, gt), abs=0.05)
        # The baselines ran on exactly this degraded input: one recomputed here gives the same PSNR.
        wavelet = next(b for b in baselines_for("denoise") if b.name == "wavelet BayesShrink")
        # float32 levels as the stage has them: BayesShrink's thresholds move with float64's last bits.
        denoised = run_baseline(wavelet, lq.astype(np.float32) / np.float32(255), DegradationRecord(noise_sigma=25.0))
        assert by_key[(image, 25.0, wavelet.name)]["psnr"] == pytest.approx(
            numpy_psnr(np.round(denoised * 255).astype(np.uint8), gt), abs=1e-3)
        assert all(by_key[(image, 25.0, name)]["model_ms"] > 0 for name in baselines)  # each one's own time
        assert by_key[(image, 0.0, "bm3d (true σ)")]["psnr"] == math.inf  # true σ 0: nothing to remove

    # Report: summary.json, the terminal table, the HTML page with plots, grids and the error list.
    summary = json.loads((report / "summary.json").read_text())
    assert (summary["images"], summary["ok"], summary["errors"], summary["rows"]) == (4, 6, 2, 4 * 2 * 7)
    assert len(summary["table"]) == 2 * 7 and len(summary["comparisons"]) == 2
    assert [b["name"] for b in summary["baselines"] if not b["blind"]] == ["bm3d (true σ)"]
    means_25 = {e["output"]: e["psnr"] for e in summary["table"] if e["strength"] == 25}
    for name in baselines:  # each really denoised (on average: NLM gains nothing on one busy 64² crop)
        assert means_25[name] > means_25["input"] + 1, (name, means_25)
    comparison_25 = next(c for c in summary["comparisons"] if c["strength"] == 25)
    best = max((e for e in summary["table"] if e["strength"] == 25 and e["output"] in baselines[:2]),
               key=lambda e: e["psnr"])  # the blind ones: BM3D was given the truth
    assert comparison_25["best_blind_baseline"] == best["output"]
    assert comparison_25["fused_minus_best_blind_baseline_psnr_db"] == pytest.approx(fused_25_psnr(summary) -
                                                                                     best["psnr"])
    fused_25 = next(e for e in summary["table"] if e["strength"] == 25 and e["output"] == "fused")
    assert fused_25["n"] == 3 and fused_25["psnr"] == pytest.approx(
        np.mean([by_key[(i, 25.0, "fused")]["psnr"] for i in images[:3]]))
    assert "synthesized" in out and "hf_distance" in out and "report" in out
    page = (report / "report.html").read_text()
    assert page.count("<svg") == 1 and "noise σ (0–255)" in page
    table_html = page.split("<table class='metrics'>")[1].split("</table>")[0]
    plot_html = page.split("<svg")[1].split("</svg>")[0]
    for name in baselines:  # a row per strength in the table, a line in the plots' legend, a grid panel
        assert table_html.count(f"<td class='l'>{html.escape(name)}</td>") == 2, name
        assert html.escape(name) in plot_html, name
        assert page.count(f"{html.escape(name)} ") >= 4 + 1, name  # 4 grid captions + the grid legend
    assert "Classical baselines" in page and "non-blind (given the true degradation)" in page
    assert page.count("data:image/png;base64,") == 4  # 2 grid images × 2 strengths
    assert "Errors (2)" in page and "zz_corrupt.jpg" in page
    assert " src='http" not in page and 'src="http' not in page  # self-contained
    strip = Image.open(report / "grids" / "china.png@25.png")
    assert strip.size == (8 * CROP + 7 * 2, CROP)  # LQ | restored | synthesized | fused | 3 baselines | GT
    embedded = page.split("data:image/png;base64,")[1].split("'")[0]
    assert Image.open(io.BytesIO(base64.b64decode(embedded))).size == strip.size


def fused_25_psnr(summary) -> float:
    return next(e["psnr"] for e in summary["table"] if e["strength"] == 25 and e["output"] == "fused")


@pytest.mark.integration
@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(400)
def test_sr_on_s3_from_a_manifest_with_lpips(s3_buckets, photos, tmp_path):
    """Clean images, manifest and report all in S3 (moto server); LPIPS from user-given files."""
    from perceptual_fixtures import write_perceptual_weights

    client = s3_buckets.client()
    for image in ("china.png", "grace_hopper.jpg"):
        client.put_object(Bucket="inputs", Key=f"clean/{image}", Body=(photos / image).read_bytes())
    client.put_object(Bucket="inputs", Key="clean/test_split.txt",
                      Body=b"# fixed test split, relative to this manifest\nchina.png\ngrace_hopper.jpg\n")
    weights = write_perceptual_weights(tmp_path)
    summary = run(EvaluateConfig(data="s3://inputs/clean/test_split.txt", task="sr", report="s3://outputs/eval/",
                                 model="preset:tiny_sr_x8", crop=CROP, grid_images=1, vgg16=weights.vgg16,
                                 lpips_heads=weights.lpips_heads))
    assert (summary.ok, summary.errors, summary.rows) == (2, 0, 2 * 1 * 6)  # 4 outputs + bicubic, Lanczos
    assert summary.report == "s3://outputs/eval/report.html"

    def fetch(key: str) -> bytes:
        return client.get_object(Bucket="outputs", Key=f"eval/{key}")["Body"].read()

    rows = pq.read_table(io.BytesIO(fetch("per_image.parquet"))).to_pylist()
    assert {r["strength"] for r in rows} == {8.0} and {r["image"] for r in rows} == {"china.png", "grace_hopper.jpg"}
    assert all(r["lpips"] is not None and math.isfinite(r["lpips"]) and r["lpips"] >= 0 for r in rows)
    for image in ("china.png", "grace_hopper.jpg"):
        row = next(r for r in rows if r["image"] == image and r["output"] == "input")
        gt = centre_crop_u8(photos / image)
        lq = degraded_u8(gt, "sr", 8, 2024, row["seed_index"])
        assert lq.shape == (CROP // 8, CROP // 8, 3)
        enlarged = torch.nn.functional.interpolate(torch.from_numpy(lq.transpose(2, 0, 1) / 255)[None].float(),
                                                   size=(CROP, CROP), mode="bicubic", align_corners=False)
        enlarged_u8 = np.round(enlarged[0].clamp(0, 1).numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
        assert row["psnr"] == pytest.approx(numpy_psnr(enlarged_u8, gt), abs=1e-4)
        lanczos = np.asarray(Image.fromarray(lq).resize((CROP, CROP), Image.Resampling.LANCZOS))
        assert next(r for r in rows if r["image"] == image and r["output"] == "lanczos (PIL)")["psnr"] == (
            pytest.approx(numpy_psnr(lanczos, gt), abs=1e-4))
    page = fetch("report.html").decode()
    assert "LPIPS" in page and page.count("data:image/png;base64,") == 1
    assert json.loads(fetch("summary.json"))["model"]["preset"] == "tiny_sr_x8"
    assert Image.open(io.BytesIO(fetch("grids/china.png@8.png"))).size == (7 * CROP + 12, CROP)
