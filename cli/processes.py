"""Stopping a child process the one way the CLI does it: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import subprocess


def terminate(proc: subprocess.Popen, timeout_s: float = 10) -> None:
    """Ask `proc` to stop; kill it if it has not within `timeout_s`. A process already gone is left alone."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
