"""Stopping a child started in a session of its own, together with everything it started (BentoML's workers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_process_group(
    process: subprocess.Popen[bytes], timeout: float = 20.0, first: signal.Signals = signal.SIGTERM
) -> None:
    """Send ``first`` to the process group, wait up to ``timeout`` seconds, then SIGKILL what is left."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, first)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
