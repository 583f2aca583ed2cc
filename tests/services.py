"""Real services for the restore tests, each started and stopped by its own handle.

- `MotoS3`: moto in server mode as a subprocess on 127.0.0.1 (its own process, so its state is its
  own: an in-process moto shares one global backend with any other in-process moto of the session).
- `local_ray()`: an in-process Ray (`ray.init(num_cpus=2)`), with the S3 test credentials
  given to its workers through the runtime environment, not through os.environ.
- `RayHead`: a `ray start --head` cluster on loopback with its own temp dir and ports, for
  `ray job submit`; stopped by killing exactly the processes that belong to its temp dir.

`ray stop` is never used: it stops every Ray process on the machine, other sessions' included.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
ACCESS_KEY = "ugpnet-test-access-key"
# Distinctive, so a test can grep every manifest, summary and log for it.
SECRET_KEY = "ugpnet-test-secret-7f3a9c-do-not-log"
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
               "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}


# Ray's raylet gives its agents 15 s or so to write their port files and aborts the node after that;
# on 2 cores shared with other test sessions that can be too short, so test clusters wait longer.
SLOW_MACHINE_RAY_ENV = {"RAY_agent_register_timeout_ms": "120000"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_temp_dir(prefix: str) -> str:
    """Ray puts unix sockets under its temp dir, and socket paths must stay under 108 bytes."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def wait_for(condition, *, timeout_s: float, interval_s: float = 0.2, what: str = "condition"):
    """Poll `condition()` until it returns something truthy; TimeoutError after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:  # gone, or not ours to read
        return []


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state; comm may hold spaces


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for other in all_pids():
        parent = parent_of(other)
        if parent is not None:
            children.setdefault(parent, []).append(other)
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_processes(pids: list[int], *, grace_s: float = 10.0) -> None:
    """SIGTERM the given processes (by PID), then SIGKILL whatever is left after `grace_s`."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop_process_group(process: subprocess.Popen, *, grace_s: float = 20.0) -> None:
    """SIGTERM the process group a test started (start_new_session=True), SIGKILL it if it outlives
    `grace_s`. A group already gone (a server that died at start) is no error, so the test reports why
    it died instead of a ProcessLookupError."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
    process.wait()


def environment(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def processes_with_env(name: str, value: str) -> list[int]:
    """PIDs whose environment has name=value. Ray workers retitle themselves (`ray::IDLE`), and when
    their raylet dies first they are re-parented to init; an environment variable set for the process
    tree that started them (e.g. a unique RAY_TMPDIR) still finds every one."""
    entry = f"{name}={value}"
    return sorted(pid for pid in all_pids() if pid != os.getpid() and entry in environment(pid))


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (a unique temp dir path), plus their descendants."""
    found = set()
    for pid in all_pids():
        if pid != os.getpid() and any(text in part for part in cmdline(pid)):
            found.add(pid)
            found.update(descendants(pid))
    found.discard(os.getpid())
    return sorted(found)


# ---------------------------------------------------------------- S3 (moto server)

class MotoS3:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.process: subprocess.Popen | None = None
        self.endpoint = ""

    def start(self) -> "MotoS3":
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # the free port can be taken between choosing and binding it
            port = free_port()
            log = open(self.workdir / f"moto-{port}.log", "wb")
            self.process = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            self.endpoint = f"http://127.0.0.1:{port}"
            try:
                wait_for(self._healthy, timeout_s=30, what="moto server")
                return self
            except TimeoutError:
                self.stop()
        raise RuntimeError("moto server did not start; see " + str(self.workdir))

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise TimeoutError(f"moto exited with {self.process.returncode}")
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process_group(self.process, grace_s=10)

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables a process needs to use this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, **CREDENTIALS}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    server = MotoS3(tmp_path_factory.mktemp("moto")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_buckets(moto_s3, monkeypatch):
    """An empty S3 with buckets `inputs` and `outputs`; this process's AWS variables point at it.

    Resets the whole (session-wide) server: a module sharing `moto_s3` must create the buckets it
    needs in module- or test-scoped fixtures, never once per session."""
    moto_s3.reset()
    for name, value in moto_s3.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = moto_s3.client()
    for bucket in ("inputs", "outputs"):
        client.create_bucket(Bucket=bucket)
    return moto_s3


# ---------------------------------------------------------------- Ray, in this process

_RAY_TEMP: list[str] = []


def local_ray():
    """Start (once per process) a 2-CPU Ray whose workers get the S3 test credentials."""
    import ray

    if ray.is_initialized():
        ray.shutdown()  # another test's Ray lacks the credentials our workers need
    for name, value in SLOW_MACHINE_RAY_ENV.items():
        os.environ.setdefault(name, value)  # read by the raylet this process starts
    for attempt in range(2):  # Ray gives a node a fixed 30 s to start; a busy machine can miss it
        temp_dir = short_temp_dir("ugr-")
        _RAY_TEMP.append(temp_dir)
        try:
            ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=True,
                     runtime_env={"env_vars": dict(CREDENTIALS)})
            return ray
        except Exception:
            ray.shutdown()
            kill_processes(processes_mentioning(temp_dir))
            if attempt == 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def ray_session():
    """Ray for one test module, shut down after it so that later modules (which may start Ray
    with settings of their own) never inherit it."""
    ray = local_ray()
    try:
        yield ray
    finally:
        ray.shutdown()
        for temp_dir in _RAY_TEMP:
            kill_processes(processes_mentioning(temp_dir))
            shutil.rmtree(temp_dir, ignore_errors=True)


def ray_worker_logs() -> str:
    """What the workers of the Ray that `local_ray` started last wrote to stderr (worker-*.err)."""
    logs = Path(_RAY_TEMP[-1]) / "session_latest" / "logs"
    return "".join(path.read_text(errors="replace") for path in sorted(logs.glob("worker-*.err")))


def ray_children_named(name: str) -> list[int]:
    """PIDs of Ray worker processes below this process whose title mentions `name` (an actor class)."""
    return [pid for pid in descendants(os.getpid()) if alive(pid) and any(name in part for part in cmdline(pid))]


# ---------------------------------------------------------------- Ray, a separate head for jobs

class RayHead:
    """`ray start --head` on 127.0.0.1 with its own temp dir and free ports, the venv's bin first on
    PATH (a job's `ugpnet` and `python` are found on the PATH of `ray start`)."""

    def __init__(self, env: dict[str, str] | None = None, num_cpus: int = 2):
        self.temp_dir = short_temp_dir("ugh-")
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.num_cpus = num_cpus
        self.env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **SLOW_MACHINE_RAY_ENV,
                    **(env or {})}
        self.env.pop("RAY_ADDRESS", None)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, attempts: int = 2) -> "RayHead":
        """`ray start --head`; on a machine too busy for Ray's fixed 30 s node start-up wait, the
        half-started head is stopped and started again (fresh ports and temp dir)."""
        for attempt in range(attempts):
            try:
                return self._start_once()
            except RuntimeError:
                self.stop()
                if attempt + 1 == attempts:
                    raise
                self.temp_dir = short_temp_dir("ugh-")
                self.gcs_port, self.dashboard_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _start_once(self) -> "RayHead":
        ports = {flag: str(free_port()) for flag in (
            "--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
            "--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port")}
        command = [str(VENV_BIN / "ray"), "start", "--head", "--temp-dir", self.temp_dir,
                   "--node-ip-address", "127.0.0.1", "--port", str(self.gcs_port), "--include-dashboard", "true",
                   "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                   "--num-cpus", str(self.num_cpus), "--disable-usage-stats",
                   *[item for pair in ports.items() for item in pair]]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=180)
        if result.returncode != 0:
            raise RuntimeError(f"ray start failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        try:
            wait_for(self._dashboard_up, timeout_s=90, what="Ray dashboard / job server")
        except TimeoutError as err:
            raise RuntimeError(str(err)) from err
        return self

    def _dashboard_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        # Everything with our temp dir in its command line, plus the Ray client server, which names
        # only the GCS address (a port chosen for this head alone) and outlives `ray start`.
        gcs_address = f":{self.gcs_port}"
        ours = set(processes_mentioning(self.temp_dir))
        ours.update(pid for pid in all_pids() if any(
            part.startswith(("--address=", "--gcs-address=")) and part.endswith(gcs_address) for part in cmdline(pid)))
        ours.discard(os.getpid())
        kill_processes(sorted(ours))
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "RayHead":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
