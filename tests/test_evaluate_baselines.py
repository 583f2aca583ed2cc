"""`ugpnet evaluate --baselines`: the classical methods run on exactly the degraded input the model
gets, become rows and grid panels, and a missing optional package is handled as documented (asked
for: exit 2 naming the extra before any work; not asked for: a warning and no baseline rows).
The Ray end-to-end checks (table, plots, grids, parquet) are in test_evaluate.py."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from evaluate_samples import CROP, centre_crop_u8, numpy_psnr, write_photos
from PIL import Image

from pipelines.evaluate.run import EvaluateConfig, add_parsers, config_from_args
from pipelines.evaluate.stages import output_names
from ugpnet.baselines import INSTALL_HINT, baselines_for, run_baseline
from ugpnet.degradations import DegradationRecord, degrade, gaussian_kernel, sample_seed
from ugpnet.tasks import evaluation_degradation as task_degradation

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def preset_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UGPNET_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"))


def parse(argv: list[str]) -> EvaluateConfig:
    import argparse

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    return config_from_args(parser.parse_args(["evaluate", *argv]))


def _stage_settings(model, task: str, strength: float, baselines: tuple[str, ...], tmp_path):
    """What the driver hands the evaluate stages, for one strength on CROP-sized tiles, no LPIPS."""
    from pipelines.common import storage
    from pipelines.evaluate.stages import EvalSettings

    return EvalSettings(run_id="t", task=task, strengths=(strength,), seed=7, crop=CROP, scale=1, fit="tile",
                        batch_size=4, max_pixels=10**8, with_lpips=False, vgg16=None, lpips_heads=None,
                        grid_crop=32, report_root=storage.resolve(str(tmp_path / "r")),
                        s3=storage.s3_spec_from_env(), model_ref=model.ref, model_version=model.model_version,
                        baselines=baselines)


def test_stages_in_process_deblur_baselines_measure_the_models_input(photos, tmp_path):
    """The two stages called directly (no Ray): deblur σ 2 with unsharp masking and Wiener. Each
    baseline row's PSNR equals the baseline recomputed here on the degraded input built here."""
    from pipelines.common.models import load_payload, resolve_model
    from pipelines.evaluate.stages import EvaluateModel, read_decode_degrade, seed_index

    model = resolve_model("preset:tiny_deblur")
    names = tuple(b.name for b in baselines_for("deblur"))
    assert names == ("unsharp mask", "wiener (true kernel)")
    settings = _stage_settings(model, "deblur", 2.0, names, tmp_path)
    batch = {"image": np.array(["flower.png"]), "input_uri": np.array([str(photos / "flower.png")]),
             "status": np.array(["pending"]), "error": np.array([""]), "grid": np.array([True])}
    rows = EvaluateModel(load_payload(model), settings, use_gpu=False, threads=1)(
        read_decode_degrade(batch, settings)).to_pylist()
    assert [(r["output"], r["status"]) for r in rows] == [(o, "ok") for o in output_names(names)]
    by_output = {r["output"]: r for r in rows}

    gt = centre_crop_u8(photos / "flower.png")
    gt_float = torch.from_numpy(gt.transpose(2, 0, 1).astype(np.float32) / 255)
    lq = degrade(gt_float, task_degradation("deblur", 2.0), sample_seed(7, seed_index("flower.png")))
    lq = lq.numpy().transpose(1, 2, 0)
    truth = DegradationRecord(kernel=gaussian_kernel(13, 2.0))  # evaluate's kernel: 2·ceil(3σ)+1 px, σ 2
    for baseline in baselines_for("deblur"):
        expected = np.round(run_baseline(baseline, lq, truth) * 255).astype(np.uint8)
        assert by_output[baseline.name]["psnr"] == pytest.approx(numpy_psnr(expected, gt), abs=1e-3), baseline.name
        assert by_output[baseline.name]["psnr"] > by_output["input"]["psnr"], baseline.name
    strip = Image.open(tmp_path / "r" / "grids" / "flower.png@2.png")
    assert strip.size == (7 * 32 + 6 * 2, 32)  # LQ | restored | synthesized | fused | unsharp | Wiener | GT
    wiener_panel = np.asarray(strip)[:, 5 * 34:5 * 34 + 32]
    assert not np.all(wiener_panel == wiener_panel[0, 0])  # a real image, not the grey of a failed one


def test_a_baseline_failing_on_a_worker_costs_only_its_own_rows(photos, tmp_path, monkeypatch):
    """A node where OpenCV does not import (really: `import cv2` fails): the NLM rows are error rows
    naming the extra, the wavelet and model rows are measured, the grid shows a grey NLM panel."""
    from pipelines.common.models import load_payload, resolve_model
    from pipelines.evaluate.stages import EvaluateModel, read_decode_degrade

    model = resolve_model("preset:tiny_denoise")
    names = ("opencv nlm", "wavelet BayesShrink")
    settings = _stage_settings(model, "denoise", 25.0, names, tmp_path)
    batch = {"image": np.array(["china.png"]), "input_uri": np.array([str(photos / "china.png")]),
             "status": np.array(["pending"]), "error": np.array([""]), "grid": np.array([True])}
    monkeypatch.setitem(sys.modules, "cv2", None)
    rows = EvaluateModel(load_payload(model), settings, use_gpu=False, threads=1)(
        read_decode_degrade(batch, settings)).to_pylist()
    status = {r["output"]: (r["status"], r["error"]) for r in rows}
    assert status["opencv nlm"][0] == "error" and status["opencv nlm"][1].startswith("baseline: ")
    assert "cv2" in status["opencv nlm"][1] and INSTALL_HINT in status["opencv nlm"][1]
    assert {o: s for o, (s, _) in status.items() if o != "opencv nlm"} == {
        o: "ok" for o in output_names(names) if o != "opencv nlm"}
    strip = np.asarray(Image.open(tmp_path / "r" / "grids" / "china.png@25.png"))
    assert np.all(strip[:, 4 * 34:4 * 34 + 32] == 128)  # the failed baseline's panel: grey, not a stale image


def test_flags_and_config_field():
    common = ["--data", "d", "--report", "r", "--task", "sr"]
    assert parse(common).baselines is True  # default: on, the packages being installed here
    assert parse(common).baseline_names == ("bicubic (PIL)", "lanczos (PIL)")
    off = parse([*common, "--no-baselines"])
    assert off.baselines is False and off.baseline_names == ()
    assert EvaluateConfig.from_mapping({"data": "d", "report": "r", "task": "deblur", "baselines": False}
                                       ).validate().baseline_names == ()
    with pytest.raises(ValueError, match="config field 'baselines': must be true or false"):
        EvaluateConfig(data="d", report="r", task="sr", baselines="yes").validate()


def test_a_missing_package_not_asked_for_warns_and_drops_the_baselines(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` now raises ImportError
    config = EvaluateConfig(data="d", report="r", task="denoise").validate()
    assert config.baselines is False and config.baseline_names == ()
    err = capsys.readouterr().err
    assert "warning" in err and "cv2" in err and INSTALL_HINT in err
    with pytest.raises(ValueError, match=r"config field 'baselines'.*cv2.*pip install 'ugpnet\[baselines\]'"):
        EvaluateConfig(data="d", report="r", task="denoise", baselines=True).validate()


@pytest.mark.timeout(120)
def test_baselines_asked_for_with_opencv_missing_exits_2_naming_the_extra(photos, tmp_path):
    """A real process where `import cv2` fails (a sitecustomize blocks it): `--baselines` is refused
    before any work, with exit 2 and the extra to install, and no report is written."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['cv2'] = None  # import cv2 fails\n")
    report = tmp_path / "report"
    command = [sys.executable, "-c", "import sys; from pipelines import cli; sys.exit(cli.main(sys.argv[1:]))",
               "evaluate", "--baselines", "--task", "denoise", "--model", "preset:tiny_denoise",
               "--data", str(photos), "--report", str(report), "--crop", str(CROP)]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": f"{blocker}:{ROOT}",
           "UGPNET_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "config field 'baselines'" in done.stderr and "cv2" in done.stderr, done.stderr[-2000:]
    assert "pip install 'ugpnet[baselines]'" in done.stderr
    assert not report.exists() and not (tmp_path / "cache").exists()  # nothing done, not even a preset built
