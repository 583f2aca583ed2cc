"""`infra/local/up` starts S3 (moto), MLflow (sqlite, artifacts on that S3) and a Ray head on 127.0.0.1,
prints the environment to export; `infra/local/down` stops exactly what `up` started."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from services import alive, kill_processes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
UP, DOWN = ROOT / "infra" / "local" / "up", ROOT / "infra" / "local" / "down"


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a listening TCP socket on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


@pytest.mark.timeout(600)
def test_up_starts_the_services_on_loopback_and_down_stops_exactly_them(tmp_path, monkeypatch):
    # A bystander whose command line names every service: `down` must not touch it.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)", "moto_server", "mlflow",
                                  "server", "ray", "gcs_server", "raylet"], start_new_session=True)
    workdir = tmp_path / "services"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_", "MLFLOW_"))}
    started = subprocess.run([str(UP), "--dir", str(workdir), "--s3-port", "0", "--mlflow-port", "0", "--ray-port",
                              "0", "--dashboard-port", "0", "--num-cpus", "1"], env=env, capture_output=True,
                             text=True, timeout=420)
    try:
        assert started.returncode == 0, started.stderr[-4000:]
        exports = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
        assert set(exports) >= {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI",
                                "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"}
        state = json.loads((workdir / "services.json").read_text())
        ports = state["ports"]
        for name in ("s3_port", "mlflow_port", "dashboard_port"):
            assert listening_addresses(ports[name]) == {"127.0.0.1"}, name

        for name, value in exports.items():
            monkeypatch.setenv(name, value)
        import boto3
        import mlflow

        s3 = boto3.client("s3", endpoint_url=exports["AWS_ENDPOINT_URL"])
        assert {"ugpnet-mlflow", "ugpnet-data"} <= {b["Name"] for b in s3.list_buckets()["Buckets"]}
        mlflow.set_tracking_uri(exports["MLFLOW_TRACKING_URI"])
        mlflow.set_experiment("infra-local")
        note = tmp_path / "note.txt"
        note.write_text("artifacts go to the local S3")
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(note))
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="ugpnet-mlflow").get("Contents", [])]
        assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys), keys
        assert (workdir / "mlflow.db").is_file()  # the sqlite backend store

        with urllib.request.urlopen(f"{exports['RAY_API_SERVER_ADDRESS']}/api/version", timeout=10) as response:
            assert json.loads(response.read())["ray_version"]
        from ray.job_submission import JobSubmissionClient

        assert JobSubmissionClient(exports["RAY_API_SERVER_ADDRESS"]).list_jobs() == []
    finally:
        stopped = subprocess.run([str(DOWN), "--dir", str(workdir)], capture_output=True, text=True, timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    recorded = [entry["pid"] for entry in state["processes"]]
    assert {entry["name"] for entry in state["processes"]} == {"s3", "mlflow", "ray"}
    assert not [pid for pid in recorded if alive(pid)]
    for name in ("s3_port", "mlflow_port", "dashboard_port", "ray_port"):
        assert not listening_addresses(ports[name]), name
    assert not Path(state["ray_temp_dir"]).exists()
    assert alive(bystander.pid)
    kill_processes([bystander.pid])
    bystander.wait(timeout=10)
    assert subprocess.run([str(DOWN), "--dir", str(workdir)], capture_output=True, timeout=60).returncode == 0


def test_down_with_nothing_recorded_is_a_no_op(tmp_path):
    result = subprocess.run([str(DOWN), "--dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "nothing to stop" in result.stderr


SLEEPER = "import time; time.sleep(900)"
PARENT = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {SLEEPER!r}]); time.sleep(900)"


@pytest.mark.timeout(120)
def test_down_stops_the_recorded_processes_and_their_children_and_no_client_of_another_cluster(tmp_path):
    from services import descendants, free_port, wait_for

    port = free_port()
    ours_command = [sys.executable, "-c", PARENT, "raylet-stand-in"]
    ours = subprocess.Popen(ours_command, start_new_session=True)
    # Someone else's clients of another cluster whose GCS happens to use the same port number.
    foreign = [subprocess.Popen([sys.executable, "-c", SLEEPER, flag], start_new_session=True)
               for flag in (f"--address=10.20.30.40:{port}", f"--gcs-address=10.20.30.40:{port}")]
    try:
        child = wait_for(lambda: descendants(ours.pid), timeout_s=30, what="the recorded process's child")[0]
        wait_for(lambda: all(Path(f"/proc/{p.pid}/cmdline").read_bytes().count(b"\0") >= 3 for p in foreign),
                 timeout_s=30, what="the foreign clients to exec")
        temp_dir = tmp_path / "ray-temp"
        temp_dir.mkdir()
        state = {"dir": str(tmp_path), "ports": {"ray_port": port}, "ray_temp_dir": str(temp_dir),
                 "processes": [{"pid": ours.pid, "cmdline": ours_command, "name": "ray"}]}
        (tmp_path / "services.json").write_text(json.dumps(state))
        stopped = subprocess.run([str(DOWN), "--dir", str(tmp_path)], capture_output=True, text=True, timeout=90)
        assert stopped.returncode == 0, stopped.stderr
        assert [p.pid for p in foreign if alive(p.pid)] == [p.pid for p in foreign], stopped.stderr
        ours.wait(timeout=10)
        assert not alive(child), "a process the recorded one started must be stopped too"
        assert not temp_dir.exists() and not (tmp_path / "services.json").exists()
    finally:
        kill_processes([ours.pid, *descendants(ours.pid), *(p.pid for p in foreign)])
        for process in (ours, *foreign):
            process.wait(timeout=10)
