"""Start and stop, on 127.0.0.1, the services UGPNet uses beyond a laptop: an S3-compatible server
(moto), an MLflow server (sqlite backend store, artifacts proxied to that S3) and a Ray head.

    infra/local/up   [--dir DIR] [--s3-port P] [--mlflow-port P] [--ray-port P] [--dashboard-port P]
    infra/local/down [--dir DIR]

`up` prints `export NAME=value` lines on stdout (everything else goes to stderr), so
`eval "$(infra/local/up)"` sets up a shell. It records what it started in DIR/services.json: PIDs
with their command lines, and Ray's own temp dir. `down` stops exactly those processes (a PID whose
command line changed belongs to someone else now and is left alone) plus the processes they started
since (the Ray workers a raylet forks later: descendants by parent PID). It never matches processes by
their arguments at `down` time (a client of another cluster on the same port could match) and never
uses `ray stop`, which stops every Ray on the machine. A port of 0 picks a free one.
"""

import argparse
import json
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

BIN = Path(sys.executable).parent  # the venv that runs this script holds moto_server, mlflow and ray
# moto accepts any credentials; these exist only for the local server and are not secrets.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "ugpnet-local", "AWS_SECRET_ACCESS_KEY": "ugpnet-local-secret",
                     "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_EC2_METADATA_DISABLED": "true"}
ARTIFACT_BUCKET = "ugpnet-mlflow"
DEFAULT_BUCKETS = (ARTIFACT_BUCKET, "ugpnet-data", "ugpnet-runs")
STATE_FILE = "services.json"


def log(message: str) -> None:
    print(f"[infra/local] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with status {process.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.25)  # polling a server that is starting
    raise RuntimeError(f"{what}: not ready after {timeout_s:.0f} s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


# ---------------------------------------------------------------- processes

def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(roots: set[int]) -> list[int]:
    """Every process whose chain of parents reaches one of `roots` (the roots excluded)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        children.setdefault(parent_of(pid), []).append(pid)
    found, stack = set(), [child for root in roots for child in children.get(root, [])]
    while stack:
        pid = stack.pop()
        if pid not in found and pid not in roots:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return sorted(found)


def pids_mentioning(text: str) -> list[int]:
    return sorted(pid for pid in all_pids() if pid != os.getpid() and any(text in part for part in cmdline(pid)))


def record(pid: int) -> dict:
    return {"pid": pid, "cmdline": cmdline(pid)}


def still_ours(entry: dict) -> bool:
    """Alive and still running what was recorded. A server that failed before it served has no
    recorded command line yet: `up` itself started it moments ago (same session), so it is ours."""
    if not alive(entry["pid"]):
        return False
    return entry["cmdline"] is None or cmdline(entry["pid"]) == entry["cmdline"]


def terminate(entries: list[dict], grace_s: float = 15.0) -> list[int]:
    """SIGTERM each recorded process that is still the one recorded (its process group too, when it
    leads one), SIGKILL what is left after `grace_s`. Returns the PIDs signalled."""
    targets = [entry for entry in entries if still_ours(entry)]
    for entry in targets:
        _signal(entry, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(alive(entry["pid"]) for entry in targets) and time.monotonic() < deadline:
        time.sleep(0.1)
    for entry in targets:
        if alive(entry["pid"]):
            _signal(entry, signal.SIGKILL)
    return [entry["pid"] for entry in targets]


def _signal(entry: dict, sig: int) -> None:
    try:
        if entry.get("group") and os.getpgid(entry["pid"]) == entry["pid"]:
            os.killpg(entry["pid"], sig)  # a server and the workers it forked (mlflow's uvicorn)
        else:
            os.kill(entry["pid"], sig)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- up

def start_process(command: list[str], log_path: Path, env: dict) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def up(args) -> int:
    workdir = Path(args.dir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    state_path = workdir / STATE_FILE
    if state_path.exists() and any(still_ours(e) for e in json.loads(state_path.read_text())["processes"]):
        log(f"services recorded in {state_path} are still running: run infra/local/down --dir {workdir} first")
        return 1
    ports = {name: getattr(args, name) or free_port() for name in ("s3_port", "mlflow_port", "ray_port",
                                                                     "dashboard_port")}
    s3_url, mlflow_url = f"http://127.0.0.1:{ports['s3_port']}", f"http://127.0.0.1:{ports['mlflow_port']}"
    state = {"dir": str(workdir), "ports": ports, "processes": [], "ray_temp_dir": None}
    base_env = {**os.environ, **LOCAL_CREDENTIALS, "AWS_ENDPOINT_URL": s3_url}
    base_env.pop("AWS_PROFILE", None)

    def save():
        state_path.write_text(json.dumps(state, indent=2))

    try:
        moto = start_process([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(ports["s3_port"])],
                             workdir / "s3.log", base_env)
        state["processes"].append({"pid": moto.pid, "cmdline": None, "name": "s3", "group": True})
        save()
        wait_until(lambda: http_ok(f"{s3_url}/moto-api/"), "S3 (moto) server", 60, moto)
        state["processes"][-1].update(record(moto.pid))  # serving: its command line is final now
        save()
        create_buckets(s3_url, args.buckets.split(","))
        log(f"S3 server on {s3_url}, buckets {args.buckets}")

        mlflow_env = {**base_env, "MLFLOW_S3_ENDPOINT_URL": s3_url, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        mlflow = start_process(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
             "--artifacts-destination", f"s3://{ARTIFACT_BUCKET}/artifacts", "--host", "127.0.0.1",
             "--port", str(ports["mlflow_port"]), "--workers", "1", "--allowed-hosts", "localhost:*,127.0.0.1:*"],
            workdir / "mlflow.log", mlflow_env)
        state["processes"].append({"pid": mlflow.pid, "cmdline": None, "name": "mlflow", "group": True})
        # Ray head next, while MLflow boots (each takes tens of seconds on a busy machine).
        # Ray puts unix sockets under its temp dir (paths must stay < 108 bytes): a short one in /tmp.
        ray_temp = tempfile.mkdtemp(prefix="ugl-", dir="/tmp")
        state["ray_temp_dir"] = ray_temp
        save()
        client_port = start_ray_head(ray_temp, ports, {**base_env, "MLFLOW_TRACKING_URI": mlflow_url}, workdir,
                                     args.num_cpus)
        state["processes"].extend({**record(pid), "name": "ray"} for pid in ray_processes(
            ray_temp, ports["ray_port"], client_port))
        save()
        wait_until(lambda: http_ok(f"{mlflow_url}/health"), "MLflow server", 180, mlflow)
        state["processes"][1].update(record(mlflow.pid))  # serving: its command line is final now
        save()
        log(f"MLflow server on {mlflow_url} (sqlite in {workdir}, artifacts in s3://{ARTIFACT_BUCKET}/artifacts)")
        log(f"Ray head on 127.0.0.1:{ports['ray_port']}, dashboard and job server "
            f"http://127.0.0.1:{ports['dashboard_port']}")
    except Exception as err:
        log(f"start-up failed: {err}; stopping what was started (logs in {workdir})")
        down_from_state(state)
        state_path.unlink(missing_ok=True)
        return 1
    exports = {**{k: v for k, v in LOCAL_CREDENTIALS.items() if k != "AWS_EC2_METADATA_DISABLED"},
               "AWS_ENDPOINT_URL": s3_url, "MLFLOW_TRACKING_URI": mlflow_url,
               "RAY_ADDRESS": f"127.0.0.1:{ports['ray_port']}",
               "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{ports['dashboard_port']}", "RAY_AUTH_MODE": "disabled"}
    for name, value in exports.items():
        print(f"export {name}={value}")
    log(f"up; stop with: infra/local/down --dir {workdir}")
    return 0


def create_buckets(endpoint: str, names: list[str]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    for name in filter(None, (n.strip() for n in names)):
        client.create_bucket(Bucket=name)


def start_ray_head(temp_dir: str, ports: dict, env: dict, workdir: Path, num_cpus: int | None) -> int:
    """Starts the head; returns the port of its Ray client server (chosen here, for this head alone)."""
    extra = {flag: str(free_port()) for flag in (
        "--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
        "--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port")}
    command = [str(BIN / "ray"), "start", "--head", "--temp-dir", temp_dir, "--node-ip-address", "127.0.0.1",
               "--port", str(ports["ray_port"]), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(ports["dashboard_port"]), "--disable-usage-stats",
               *[item for pair in extra.items() for item in pair],
               *(["--num-cpus", str(num_cpus)] if num_cpus else [])]
    # Jobs resolve `ugpnet` and `python` on the PATH of `ray start`: this venv first. Loopback only,
    # so job-server token authentication is off; agents get longer to register on a busy machine.
    ray_env = {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_AUTH_MODE": "disabled",
               "RAY_USAGE_STATS_ENABLED": "0", "RAY_agent_register_timeout_ms": "120000"}
    ray_env.pop("RAY_ADDRESS", None)
    with open(workdir / "ray-start.log", "ab") as out:
        result = subprocess.run(command, env=ray_env, stdout=out, stderr=subprocess.STDOUT, timeout=240)
    if result.returncode != 0:
        raise RuntimeError(f"ray start failed with status {result.returncode} (see {workdir / 'ray-start.log'})")
    wait_until(lambda: http_ok(f"http://127.0.0.1:{ports['dashboard_port']}/api/version"), "Ray job server", 120)
    return int(extra["--ray-client-server-port"])


def ray_processes(temp_dir: str, gcs_port: int, client_port: int) -> list[int]:
    """Right after `ray start`: everything with our temp dir in its command line, plus the Ray client
    server, which names no temp dir: it is the one serving our client port for our GCS address."""
    found = set(pids_mentioning(temp_dir))
    client_server = {"ray.util.client.server", f"--address=127.0.0.1:{gcs_port}", f"--port={client_port}"}
    found.update(pid for pid in all_pids() if client_server <= set(cmdline(pid)))
    found.discard(os.getpid())
    return sorted(found)


# ---------------------------------------------------------------- down

def down_from_state(state: dict) -> list[int]:
    entries = list(state.get("processes", []))
    temp_dir = state.get("ray_temp_dir")
    # Processes started after `up` (Ray workers, job drivers) are children of the recorded ones.
    known = {entry["pid"] for entry in entries}
    for entry in [e for e in entries if still_ours(e)]:
        entries += [{**record(pid), "name": entry.get("name")} for pid in descendants({entry["pid"]})
                    if pid not in known]
        known.update(e["pid"] for e in entries)
    ray_entries = [e for e in entries if e.get("name") == "ray"]
    stopped = terminate(ray_entries)  # Ray first: its workers may be using S3 and MLflow
    stopped += terminate([e for e in entries if e.get("name") != "ray"])
    if temp_dir:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return stopped


def down(args) -> int:
    state_path = Path(args.dir).resolve() / STATE_FILE
    if not state_path.exists():
        log(f"nothing recorded in {state_path}: nothing to stop")
        return 0
    state = json.loads(state_path.read_text())
    stopped = down_from_state(state)
    left = [e["pid"] for e in state["processes"] if still_ours(e)]
    if left:
        log(f"could not stop {left}")
        return 1
    state_path.unlink()
    log(f"stopped {len(stopped)} process(es): {stopped}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    default_dir = os.environ.get("UGPNET_LOCAL_DIR", os.path.join(tempfile.gettempdir(),
                                                                   f"ugpnet-local-{os.getuid()}"))
    start = sub.add_parser("up")
    stop = sub.add_parser("down")
    for p in (start, stop):
        p.add_argument("--dir", default=default_dir, help=f"logs, sqlite db and services.json (default {default_dir})")
    start.add_argument("--s3-port", type=int, default=9000, help="0: any free port (default 9000)")
    start.add_argument("--mlflow-port", type=int, default=5000, help="0: any free port (default 5000)")
    start.add_argument("--ray-port", type=int, default=6379, help="Ray GCS port; 0: any free port (default 6379)")
    start.add_argument("--dashboard-port", type=int, default=8265, help="Ray dashboard / job server (default 8265)")
    start.add_argument("--num-cpus", type=int, default=None, help="CPUs the Ray head offers (default: all)")
    start.add_argument("--buckets", default=",".join(DEFAULT_BUCKETS), help="buckets to create, comma-separated")
    args = parser.parse_args(argv)
    return up(args) if args.action == "up" else down(args)


if __name__ == "__main__":
    sys.exit(main())
