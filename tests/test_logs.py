"""`--log-format json`: every line the `ugpnet` process prints is one JSON object (real processes,
a real local Ray for restore); `text` prints as before; the per-stage figures of a run summary."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from restore_samples import photo
from services import SLOW_MACHINE_RAY_ENV, kill_processes, processes_mentioning, short_temp_dir

import ugpnet
from pipelines import cli
from pipelines.archive.run import ArchiveSummary
from pipelines.common import logs
from pipelines.restore.throughput import STAGES, stage_figures, stages_line

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("time", "level", "message", "verb")


def cli_process(args: list[str], env: dict | None = None, timeout: int = 60) -> subprocess.CompletedProcess:
    """The CLI of this checkout as its own process (the installed `ugpnet` script may be another's)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    env.pop("RAY_ADDRESS", None)  # a local Ray of its own, never a cluster this machine may know of
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout, check=False)


def json_lines(text: str) -> list[dict]:
    """Every line as a JSON object carrying the common fields; fails on the first line that is not."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError as err:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from err
        assert isinstance(record, dict), line
        assert all(name in record for name in FIELDS), line
        assert record["time"].endswith("Z") and record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR",
                                                                    "CRITICAL"), line
        records.append(record)
    return records


def test_a_bad_config_prints_one_json_error_line(tmp_path):
    config = tmp_path / "restore.yaml"
    config.write_text("fit: sideways\n")
    done = cli_process(["restore", "--log-format", "json", "--config", str(config), "--input", "a", "--output", "b"])
    assert done.returncode == 2
    assert done.stdout == ""
    [record] = json_lines(done.stderr)
    assert record["level"] == "ERROR" and record["verb"] == "restore"
    assert record["message"] == "ugpnet restore: error: config field 'fit': must be one of resize, tile, error, " \
                                "got 'sideways'"


def test_text_is_the_default_and_prints_as_before(tmp_path):
    config = tmp_path / "restore.yaml"
    config.write_text("fit: sideways\n")
    done = cli_process(["restore", "--config", str(config), "--input", "a", "--output", "b"])
    assert done.returncode == 2
    assert done.stderr == "ugpnet restore: error: config field 'fit': must be one of resize, tile, error, " \
                          "got 'sideways'\n"


def test_the_option_goes_before_or_after_any_verb():
    parser = cli.build_parser()
    assert parser.parse_args(["--log-format", "json", "presets"]).log_format == "json"
    assert parser.parse_args(["models", "list", "--log-format", "json"]).log_format == "json"
    assert logs.requested_format(["data", "prepare", "--log-format=json"]) == "json"
    assert logs.requested_format(["presets"]) == "text"


def test_usage_errors_and_listings_are_json_too():
    wrong = cli_process(["--log-format", "json", "restore", "--no-such-flag"])
    assert wrong.returncode == 2
    assert any("unrecognized arguments: --no-such-flag" in r["message"] for r in json_lines(wrong.stderr))
    listing = cli_process(["presets", "--log-format", "json"])
    assert listing.returncode == 0 and listing.stderr == ""
    rows = json_lines(listing.stdout)
    assert len(rows) > 2 and {r["verb"] for r in rows} == {"presets"} and rows[0]["message"].startswith("preset")


# What libraries and native code print, each way they print it, inside a json session.
NOISY_DRIVER = textwrap.dedent("""
    import logging, os, sys, traceback, warnings
    from pipelines.common import logs

    with logs.driver_output("json"):
        logs.bind(verb="restore", run_id="r1")
        print("plain line")
        print('{"restored": 2}')
        print("ugpnet restore: run failed: boom", file=sys.stderr)
        sys.stderr.write("2026-01-02 03:04:05,678\\tINFO streaming_executor.py:215 -- Starting execution\\n")
        os.write(2, b"[2026-01-02 03:04:05,678 E 12 12] core_worker.cc:2465: native complaint\\n")
        os.write(1, b"native stdout\\n")
        logging.getLogger("mlflow").warning("a library warning")
        warnings.warn("deprecated thing")
        try:
            raise ValueError("inner")
        except ValueError:
            traceback.print_exc()
        try:
            try:
                raise KeyError("cause")
            except KeyError as cause:
                raise RuntimeError("outer") from cause
        except RuntimeError as err:  # as cli.main prints an unexpected failure: one write
            print("".join(traceback.format_exception(err)), file=sys.stderr, end="")
        sys.stdout.write("no newline at the end")
""")


def test_every_way_of_printing_becomes_one_json_line():
    done = subprocess.run([sys.executable, "-c", NOISY_DRIVER], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    out, err = json_lines(done.stdout), json_lines(done.stderr)
    assert all(r["verb"] == "restore" and r["run_id"] == "r1" for r in out + err)
    by_message = {r["message"]: r for r in out + err}
    assert by_message["plain line"]["level"] == "INFO"
    assert by_message['{"restored": 2}']["data"] == {"restored": 2}
    assert by_message["ugpnet restore: run failed: boom"]["level"] == "ERROR"
    assert by_message["Starting execution"]["source"] == "streaming_executor.py:215"
    assert by_message["native complaint"]["level"] == "ERROR"
    assert by_message["native complaint"]["logger"] == "ray.native"
    assert "native stdout" in [r["message"] for r in out]
    assert by_message["a library warning"]["logger"] == "mlflow"
    assert any("deprecated thing" in r["message"] and r["logger"] == "py.warnings" for r in err)
    printed, written = [r for r in err if r["message"].startswith("Traceback")]
    assert printed["level"] == "ERROR" and printed["message"].endswith("ValueError: inner")
    assert written["level"] == "ERROR" and "KeyError: 'cause'" in written["message"]
    assert written["message"].endswith("RuntimeError: outer")
    assert out[-1]["message"] == "no newline at the end"


def test_stage_figures_sum_each_stage_and_divide_by_its_inputs():
    stage_ms = {"read_ms": 500.0, "decode_ms": 250.0, "model_ms": 4000.0, "encode_ms": 0.0, "write_ms": 100.0}
    timed = {"read_ms": 10, "decode_ms": 10, "model_ms": 8, "encode_ms": 0, "write_ms": 8}
    figures = stage_figures(stage_ms, timed)
    assert list(figures) == list(STAGES)
    assert figures["read"] == {"time_s": 0.5, "images": 10, "images_per_s": 20.0}
    assert figures["decode"]["images_per_s"] == 40.0
    assert figures["model"] == {"time_s": 4.0, "images": 8, "images_per_s": 2.0}
    assert figures["encode"] == {"time_s": 0.0, "images": 0, "images_per_s": None}
    assert figures["write"]["images_per_s"] == 80.0
    assert stages_line(figures) == ("stages (summed over inputs): read 500.0 ms (20.00 images/s), decode 250.0 ms "
                                    "(40.00 images/s), model 4.0 s (2.00 images/s), encode 0.0 ms (- images/s), "
                                    "write 100.0 ms (80.00 images/s)")
    assert stages_line(stage_figures({}, {})) == ""  # a run that only skipped: no stage line


def test_the_archive_summary_carries_the_restore_stages():
    figures = stage_figures({"read_ms": 1000.0}, {"read_ms": 4})
    summary = ArchiveSummary(run_id="a1", committed=True, version=3, selected=4, ok=4, stages=figures)
    first, second = summary.line().split("\n")
    assert first.startswith("archive a1: committed version 3")
    assert second == "  " + stages_line(figures)


def test_progress_bars_only_for_a_person_at_a_terminal():
    assert logs.progress_bars_wanted("text", interactive=True)
    assert not logs.progress_bars_wanted("text", interactive=False)
    assert not logs.progress_bars_wanted("json", interactive=True)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_restore_run_prints_only_json_lines_with_its_summary(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(2):
        (inputs / f"p{index}.jpg").write_bytes(photo(48, 40, seed=index))
    bundle = ugpnet.save(ugpnet.build("tiny_denoise", seed=0), tmp_path / "tiny")
    ray_tmp = short_temp_dir("ugl-")  # the CLI's own local Ray: its processes are found by this path
    env = {**SLOW_MACHINE_RAY_ENV, "RAY_TMPDIR": ray_tmp}
    try:
        done = cli_process(["--log-format", "json", "restore", "--input", str(inputs), "--output",
                            str(tmp_path / "out"), "--model", str(bundle), "--run-id", "jsonrun"],
                           env=env, timeout=240)
    finally:
        kill_processes(processes_mentioning(ray_tmp), grace_s=5)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out, err = json_lines(done.stdout), json_lines(done.stderr)
    assert {r["verb"] for r in out + err} == {"restore"}
    assert not [r for r in out + err if "\r" in r["message"]]  # no progress bar
    [summary] = [r["summary"] for r in out if "summary" in r]
    assert summary["run_id"] == "jsonrun" and summary["ok"] == 2 and summary["total"] == 2
    assert list(summary["stages"]) == list(STAGES)
    for stage, figure in summary["stages"].items():
        assert figure["images"] == 2, stage
        assert figure["time_s"] >= 0 and (figure["images_per_s"] is None or figure["images_per_s"] > 0)
    assert summary["stages"]["model"]["images_per_s"] > 0
    assert all(r["run_id"] == "jsonrun" for r in out)
    record = json.loads((tmp_path / "out/_ugpnet/runs/jsonrun.json").read_text())
    assert record["stages"] == summary["stages"]
