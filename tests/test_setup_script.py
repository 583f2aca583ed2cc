"""`scripts/setup.sh` keeps pip's exit status: a failed install stops it before the "installed" stamp.

Runs a copy of the real script in a temporary project whose `.venv/bin/python` is a stand-in that
prints what pip prints and fails on request, so no package is installed."""

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls.log"
case "$*" in
  *"-m pip install"*)
    echo "WARNING: Location 'https://mirror.invalid' is ignored."
    case "$*" in
      *"$FAIL_ON"*) echo "ERROR: No matching distribution found for $FAIL_ON"; exit 1 ;;
    esac ;;
esac
exit 0
"""


def project_copy(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(ROOT / "scripts" / "constraints.txt", tmp_path / "scripts" / "constraints.txt")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for copied in (tmp_path / "pyproject.toml", tmp_path / "scripts" / "constraints.txt"):
        os.utime(copied, (1_000_000_000, 1_000_000_000))  # older than any stamp written now
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def run_setup(project: Path, fail_on: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FAIL_ON": fail_on}
    return subprocess.run(["bash", str(project / "scripts" / "setup.sh")], env=env, capture_output=True,
                          text=True, timeout=60)


def test_setup_fails_and_writes_no_stamp_when_an_install_fails(tmp_path):
    project = project_copy(tmp_path)
    result = run_setup(project, fail_on="-e .[dev]")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "No matching distribution" in result.stdout + result.stderr  # pip's own error is shown
    assert "pip install" in result.stderr and "failed with status 1" in result.stderr
    assert "WARNING: Location" not in result.stdout + result.stderr  # the noise is still filtered
    assert not (project / ".venv" / ".ugpnet-installed").exists()
    calls = (project / ".venv" / "bin" / "calls.log").read_text()
    assert "import torch" not in calls  # stopped at the failed install


def test_setup_writes_its_stamp_when_every_install_succeeds(tmp_path):
    project = project_copy(tmp_path)
    result = run_setup(project, fail_on="no-such-argument")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING: Location" not in result.stdout + result.stderr
    assert (project / ".venv" / ".ugpnet-installed").is_file()
    assert run_setup(project, fail_on="").returncode == 0  # stamped: nothing is installed again
