"""bench/gpu_check.sh, the prepared GPU check: its dry path (CPU, tiny sizes) runs every step's code."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.integration
def test_the_gpu_check_dry_path_runs_every_step():
    # The script's own limit is for GPU machines; a CI runner under load gets the test's.
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "GPU_CHECK_TIMEOUT_S": "840",
           "RAY_agent_register_timeout_ms": "120000"}
    process = subprocess.Popen(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=870)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # only the group this test started
            process.wait()
    assert process.returncode == 0, stderr[-3000:]
    steps = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    by_step = {}
    for step in steps:
        by_step.setdefault(step["step"], []).append(step)
    assert by_step["start"][0]["dry"] is True and by_step["start"][0]["device"] == "cpu"
    assert all(step["ok"] for step in by_step["conformance"])
    bf16 = by_step["precision"][0]
    assert bf16["precision"] == "bf16" and 0 < bf16["I_F"]["relative_l2"] < 0.1
    assert by_step["model"][0]["images_per_s"] > 0
    pipelines = {step["stages"]: step for step in by_step["pipeline"]}
    assert set(pipelines) == {"fused", "split"}
    for step in pipelines.values():
        assert step["ok"] == step["total"] == 4 and step["images_per_s"] > 0
    assert by_step["verdict"][0]["ok"] is True
