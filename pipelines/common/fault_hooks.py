"""Test-only fault hooks of the model stage, off unless their environment variable is set in the
Ray workers' environment (set it before `ray.init`, or in the job's runtime_env).

The suite uses them to make one chosen image fail *inside* a real model actor, which no real
input can be relied on to do:

- UGPNET_FAULT_MODEL_RAISE=TEXT: the model stage raises for any model call holding a tile of an
  input whose URI contains TEXT (an image the model cannot run);
- UGPNET_FAULT_MODEL_KILL=TEXT: the actor's process SIGKILLs itself instead (as the kernel's
  out-of-memory killer would), on every attempt.
"""

import os
import signal

RAISE_ENV = "UGPNET_FAULT_MODEL_RAISE"
KILL_ENV = "UGPNET_FAULT_MODEL_KILL"


class InjectedFault(RuntimeError):
    """The model stage was told to fail on this input (a test hook)."""


def before_model(input_uris: list[str]) -> None:
    """Called by the model stage before each model call with the URIs of the inputs it holds."""
    kill, fail = os.environ.get(KILL_ENV), os.environ.get(RAISE_ENV)
    if kill and any(kill in uri for uri in input_uris):
        os.kill(os.getpid(), signal.SIGKILL)
    if fail:
        hit = [uri for uri in input_uris if fail in uri]
        if hit:
            raise InjectedFault(f"injected model fault for {hit[0]}")
