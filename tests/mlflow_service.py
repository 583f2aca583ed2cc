"""A real MLflow tracking server for tests: sqlite backend store, artifacts proxied to an
S3-compatible server, bound to 127.0.0.1 and stopped by the fixture that started it (by PID)."""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from services import free_port, stop_process_group

# The environment's scripts: found on PATH only when the virtualenv is activated, which CI does not do
# (it runs .venv/bin/python); `mlflow models serve` also runs `uvicorn` from there by name.
SCRIPTS_DIR = str(Path(sys.executable).parent)


def mlflow_executable() -> str:
    return shutil.which("mlflow", path=SCRIPTS_DIR) or "mlflow"


def wait_until_healthy(url: str, process: subprocess.Popen, deadline_s: float, log: Path,
                       path: str = "/health") -> None:
    """Polls `url + path` (the tracking server's /health; a model server's /ping) until it answers 200."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)  # polling interval while the server boots, not a race workaround
    raise TimeoutError(f"mlflow server at {url} not healthy after {deadline_s}s:\n{log.read_text()[-3000:]}")


@contextmanager
def mlflow_server(workdir: Path, artifacts_destination: str, s3_env: dict[str, str]):
    """Yields the tracking URI of a fresh server; kills the server's process group afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "mlflow-server.log"
    env = {**os.environ, **s3_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [mlflow_executable(), "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
               "--artifacts-destination", artifacts_destination, "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--allowed-hosts", "localhost:*,127.0.0.1:*"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, 120, log)
        yield url
    finally:
        stop_process_group(process)
