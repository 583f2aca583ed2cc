"""Local writes survive a power cut and a kill (issue 10 point 7), observed with a real `strace` of a
real process: what it opens, fsyncs and renames, in order (a power cut itself cannot be staged here)."""

import os
import re
import shutil
import subprocess
import sys

import pytest
from restore_samples import photo
from services import VENV_BIN, kill_processes, processes_with_env, short_temp_dir

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")

SYSCALLS = "openat,fsync,fdatasync,rename,renameat,renameat2"
# 1234  openat(AT_FDCWD, "/x/.a.json.1f2e.tmp", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 3
CALL = re.compile(r'^(?P<pid>\d+)\s+(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<result>-?\d+)')


def traced(tmp_path, command: list[str], env: dict | None = None) -> list[tuple[str, str, str]]:
    """Run `command` under strace -f; returns (syscall, arguments, result) in order, fds resolved to
    paths (-y) so that "fsync(3</x/.a.tmp>)" names the file."""
    log = tmp_path / "strace.log"
    result = subprocess.run(["strace", "-f", "-qq", "-y", "--seccomp-bpf", "-e", f"trace={SYSCALLS}",
                             "-o", str(log), *command], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    calls = []
    for line in log.read_text().splitlines():
        match = CALL.match(line)
        if match:
            calls.append((match["name"], match["args"], match["result"]))
    return calls


def test_write_bytes_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path):
    target = tmp_path / "state" / "HEAD.json"
    code = ("from pipelines.common import storage; "
            f"storage.write_bytes(storage.resolve({str(target)!r}), b'{{\"version\": 7}}')")
    calls = traced(tmp_path, [sys.executable, "-c", code])
    renames = [i for i, (name, args, _) in enumerate(calls) if name.startswith("rename") and str(target) in args]
    assert len(renames) == 1, calls[-20:]
    temp = re.search(r'"([^"]+\.tmp)"', calls[renames[0]][1])[1]
    file_syncs = [i for i, (name, args, _) in enumerate(calls)
                  if name in ("fsync", "fdatasync") and f"<{temp}>" in args]
    folder_syncs = [i for i, (name, args, _) in enumerate(calls)
                    if name in ("fsync", "fdatasync") and f"<{target.parent}>" in args]
    assert file_syncs and file_syncs[0] < renames[0], "the data is not on disk before the rename"
    assert folder_syncs and folder_syncs[-1] > renames[0], "the rename itself is not on disk"
    assert target.read_bytes() == b'{"version": 7}'


def test_a_state_file_is_on_disk_before_head_can_point_at_it(tmp_path):
    """The archive uploads its state version and changes (copied by pyarrow), then commits HEAD.json:
    the copies must be flushed first, or HEAD.json can survive a power cut that its state file did not."""
    source, root = tmp_path / "state.parquet", tmp_path / "state"
    source.write_bytes(b"PAR1 pretend parquet PAR1")
    code = ("from pipelines.common import storage; from pipelines.archive.state import StateStore; "
            f"StateStore(storage.resolve({str(root)!r})).upload({str(source)!r}, 'versions/0000000001-r.parquet')")
    calls = traced(tmp_path, [sys.executable, "-c", code])
    target = root / "versions" / "0000000001-r.parquet"
    written = [i for i, (name, args, _) in enumerate(calls) if name == "openat" and f'"{target}"' in args
               and "O_CREAT" in args]
    synced = [i for i, (name, args, _) in enumerate(calls) if name in ("fsync", "fdatasync") and f"<{target}>" in args]
    folder = [i for i, (name, args, _) in enumerate(calls)
              if name in ("fsync", "fdatasync") and f"<{target.parent}>" in args]
    assert written and synced and synced[-1] > written[0], "the state file is not flushed"
    assert folder and folder[-1] > written[0], "its directory entry is not flushed"
    assert target.read_bytes() == source.read_bytes()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_restore_never_writes_a_manifest_file_where_readers_look(tmp_path):
    """A run killed mid-write used to leave a truncated parquet file in the manifest folder: every file
    must be written under a hidden name and appear in the folder only by a rename once complete."""
    source, dest = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for index in range(3):
        (source / f"{index}.png").write_bytes(photo(32, 24, seed=index, fmt="PNG"))
    ray_tmp = short_temp_dir("ugd-")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    try:
        calls = traced(tmp_path, [str(VENV_BIN / "ugpnet"), "restore", "--input", str(source), "--output",
                                  str(dest), "--model", "preset:tiny_denoise", "--run-id", "r1", "--batch-size", "2"],
                       env)
    finally:
        kill_processes(processes_with_env("RAY_TMPDIR", ray_tmp), grace_s=5)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    manifest = dest / "_ugpnet" / "manifest" / "r1"
    visible = sorted(p.name for p in manifest.iterdir())
    assert visible and all(name.endswith(".parquet") for name in visible), visible
    for name in visible:
        final = f"{manifest}/{name}"
        opened_there = [args for call, args, result in calls
                        if call == "openat" and f'"{final}"' in args and "O_CREAT" in args]
        assert not opened_there, f"{name} was written in place: {opened_there[0]}"
        assert any(call.startswith("rename") and f'"{final}"' in args for call, args, _ in calls), name
