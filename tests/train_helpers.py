"""Helpers for training tests: real photo folders, the CLI as a subprocess, process discovery."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from services import cmdline

REPO = Path(__file__).resolve().parents[1]


def photo_folder(directory: Path, corrupt: int = 1) -> Path:
    """The shipped sample photos, a few crops of one (so validation and training splits both exist),
    and corrupt files that training must skip."""
    from PIL import Image

    from pipelines.data.samples import write_sample_photos

    write_sample_photos(directory, with_skimage=False)
    (directory / "SOURCES.json").unlink()
    china = Image.open(directory / "china.png")
    for i, box in enumerate([(0, 0, 320, 320), (300, 100, 620, 420), (100, 50, 400, 400)]):
        china.crop(box).save(directory / f"crop_{i}.png")
    for i in range(corrupt):
        (directory / f"corrupt_{i}.jpg").write_bytes(b"<html>not an image</html>")
    return directory


def start_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`ugpnet …` in its own session, so the Ray processes it starts can be found and killed with it."""
    out = open(log, "wb")
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, env={**os.environ, **env},
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_session(process: subprocess.Popen) -> None:
    """SIGKILL every process of the CLI's session (driver, the Ray cluster it started, workers)."""
    sid = os.getsid(process.pid)
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=60)


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
    return pids


def process_title(pid: int) -> str:
    return " ".join(cmdline(pid))


def tail(log: Path | None, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log and log.exists() else ""


def while_running(process: subprocess.Popen, log: Path, condition):
    """`condition` for wait_for that fails at once, with the log's tail, if the CLI has already exited
    (so a run that died at start-up is reported as such, not as a long timeout)."""
    def check():
        if process.poll() is not None:
            raise AssertionError(f"ugpnet exited with {process.returncode} before the awaited state:\n{tail(log)}")
        return condition()
    return check
