"""A two-node Ray cluster on one machine whose nodes share nothing but S3 and the tracking server.

- head: `ray start --head --num-cpus 0` on 127.0.0.1 (job server and dashboard on 127.0.0.1), so every
  task, actor and training worker runs on the worker node;
- worker node: `ray start --address … --block` inside its own mount namespace with a private tmpfs over
  /tmp (`unshare -m --propagation private`), so nothing a job driver writes under /tmp on the head is
  visible to remote code, exactly as on a real cluster without a shared filesystem;
- moto S3 server and an MLflow tracking server (sqlite on this side, artifacts proxied to that S3),
  both on 127.0.0.1: the only shared state.

Jobs go through the job server (`submit`, the job server's SDK). Everything is stopped by PID or
process group (the worker node's processes also carry an environment marker, which finds workers
re-parented after their raylet died); `ray stop` is never used.

By hand: `python tests/multinode.py up` starts it, prints the addresses and waits for Ctrl-C.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # run by hand: the helpers beside this file

from mlflow_service import mlflow_server  # noqa: E402
from services import (  # noqa: E402
    SLOW_MACHINE_RAY_ENV,
    VENV_BIN,
    MotoS3,
    RayHead,
    free_port,
    kill_processes,
    processes_with_env,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
NODE_MARKER = "UGPNET_TEST_NODE"   # set on the worker node's `ray start`; inherited by all its processes
WORKER_CPUS = 2
ARTIFACT_BUCKET = "mlflow-artifacts"


class NamespaceError(RuntimeError):
    """The private mount namespace for the worker node cannot be made here (needs root, unshare)."""


def check_private_tmp() -> None:
    """Fail now, with the reason, if `unshare -m` + tmpfs over /tmp does not work on this machine."""
    probe = f"ugpnet-namespace-probe-{uuid.uuid4().hex}"
    Path("/tmp", probe).write_text("host side")
    try:
        result = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                 f"mount -t tmpfs none /tmp && test ! -e /tmp/{probe}"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise NamespaceError(f"cannot run unshare for the multi-node test cluster: {err}") from err
    finally:
        Path("/tmp", probe).unlink()
    if result.returncode != 0:
        raise NamespaceError("the multi-node test cluster needs a private mount namespace for its worker node "
                             "(root, `unshare -m --propagation private`, `mount -t tmpfs none /tmp`); here it "
                             f"failed with {result.returncode}: {result.stderr.strip() or result.stdout.strip()}")


class WorkerNode:
    """`ray start --address … --block` in a private mount namespace, in its own process group."""

    def __init__(self, gcs_address: str, env: dict[str, str], log: Path, num_cpus: int = WORKER_CPUS):
        self.gcs_address, self.env, self.log, self.num_cpus = gcs_address, env, log, num_cpus
        self.marker = uuid.uuid4().hex
        self.process: subprocess.Popen | None = None

    def start(self) -> "WorkerNode":
        ports = {flag: str(free_port()) for flag in (
            "--node-manager-port", "--object-manager-port", "--metrics-export-port", "--runtime-env-agent-port",
            "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port")}
        ray_start = [str(VENV_BIN / "ray"), "start", "--address", self.gcs_address, "--node-ip-address", "127.0.0.1",
                     "--num-cpus", str(self.num_cpus), "--disable-usage-stats", "--block",
                     *[item for pair in ports.items() for item in pair]]
        # `exec` keeps the process group's leader the raylet's parent, so killpg reaches the whole node.
        script = "mount -t tmpfs none /tmp && exec " + " ".join(ray_start)
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                            env={**self.env, NODE_MARKER: self.marker}, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def processes(self) -> list[int]:
        return processes_with_env(NODE_MARKER, self.marker)

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        kill_processes(self.processes(), grace_s=5)  # re-parented workers, agents: found by the marker
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def alive_nodes(dashboard_url: str) -> list[dict]:
    import json

    try:
        with urllib.request.urlopen(f"{dashboard_url}/api/v0/nodes?limit=100", timeout=5) as response:
            body = json.loads(response.read())
    except OSError:
        return []
    return [n for n in body["data"]["result"]["result"] if n.get("state") == "ALIVE"]


class MultiNodeCluster:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.stack = ExitStack()
        self.s3: MotoS3 | None = None
        self.head: RayHead | None = None
        self.worker: WorkerNode | None = None
        self.tracking_uri = ""

    # ------------------------------------------------------------ start / stop

    def start(self) -> "MultiNodeCluster":
        check_private_tmp()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_services()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_services(self) -> None:
        self.s3 = MotoS3(self.workdir / "moto").start()
        self.stack.callback(self.s3.stop)
        self.s3.client().create_bucket(Bucket=ARTIFACT_BUCKET)
        mlflow_env = {**self.s3.env, "MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint}
        self.tracking_uri = self.stack.enter_context(
            mlflow_server(self.workdir / "mlflow", f"s3://{ARTIFACT_BUCKET}/artifacts", mlflow_env))
        self.head = RayHead(env=self.node_env, num_cpus=0).start()
        self.stack.callback(self.head.stop)
        gcs_address = f"127.0.0.1:{self.head.gcs_port}"
        self.worker = WorkerNode(gcs_address, self.head.env, self.workdir / "worker-node.log").start()
        self.stack.callback(self.worker.stop)
        wait_for(self._two_nodes, timeout_s=180, interval_s=1.0, what="the worker node to join the head")

    def _two_nodes(self) -> bool:
        if self.worker.process.poll() is not None:
            raise RuntimeError(f"the worker node exited with {self.worker.process.returncode}:\n"
                               f"{self.worker.log.read_text(errors='replace')[-3000:]}")
        nodes = alive_nodes(self.head.dashboard_url)
        return len(nodes) == 2

    def stop(self) -> None:
        self.stack.close()

    # ------------------------------------------------------------ what jobs see

    @property
    def node_env(self) -> dict[str, str]:
        """Environment of both nodes' `ray start`: S3 and tracking, as a real cluster's nodes would have.
        PYTHONPATH makes jobs and workers import this checkout (not an installed copy)."""
        return {**self.s3.env, "MLFLOW_TRACKING_URI": self.tracking_uri, "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
                "PYTHONPATH": str(REPO), **SLOW_MACHINE_RAY_ENV}

    def jobs(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.head.dashboard_url)

    def submit(self, entrypoint: str, *, env: dict[str, str] | None = None, submission_id: str | None = None) -> str:
        """Submit through the job server; the job's runtime env carries only non-secret settings."""
        runtime_env = {"env_vars": {"PYTHONPATH": str(REPO), **(env or {})}}
        return self.jobs().submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                      submission_id=submission_id or f"job-{uuid.uuid4().hex[:8]}")

    def wait(self, submission_id: str, timeout_s: float) -> tuple[str, str]:
        """(final status, logs) of a job; stops it and raises TimeoutError after `timeout_s`."""
        from ray.job_submission import JobStatus

        client = self.jobs()
        terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        try:
            status = wait_for(lambda: (s := client.get_job_status(submission_id)) in terminal and s,
                              timeout_s=timeout_s, interval_s=1.0, what=f"job {submission_id}")
        except TimeoutError as err:
            client.stop_job(submission_id)
            raise TimeoutError(f"{err}; logs:\n{client.get_job_logs(submission_id)[-4000:]}") from err
        return str(status), client.get_job_logs(submission_id)

    def run_job(self, entrypoint: str, *, timeout_s: float = 600, env: dict[str, str] | None = None,
                submission_id: str | None = None) -> tuple[str, str]:
        return self.wait(self.submit(entrypoint, env=env, submission_id=submission_id), timeout_s)

    def worker_node_processes(self) -> list[int]:
        return self.worker.processes()


@pytest.fixture(scope="module")
def multinode_cluster(tmp_path_factory):
    """One cluster per test module (starting one costs about a minute on a busy machine)."""
    cluster = MultiNodeCluster(tmp_path_factory.mktemp("multinode")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str]) -> int:
    if argv[1:] != ["up"]:
        print("usage: python tests/multinode.py up", file=sys.stderr)
        return 2
    import tempfile

    cluster = MultiNodeCluster(Path(tempfile.mkdtemp(prefix="ugpnet-multinode-"))).start()
    try:
        print(f"job server / dashboard: {cluster.head.dashboard_url}\nS3 endpoint: {cluster.s3.endpoint}\n"
              f"tracking: {cluster.tracking_uri}\nworker node marker: {NODE_MARKER}={cluster.worker.marker}\n"
              f"submit: RAY_ADDRESS={cluster.head.dashboard_url} ray job submit -- ugpnet …\n"
              "Ctrl-C stops everything.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
