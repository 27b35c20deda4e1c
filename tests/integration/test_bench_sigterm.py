"""A benchmark stopped with SIGTERM (a CI timeout, `kill`) stops the pods, Envoy and EPP it
started, as Ctrl-C does, instead of leaving them running."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.procs import REPO

pytestmark = pytest.mark.integration


def _descendants(pid: int) -> dict[int, str]:
    """Every process below pid -> its command line."""
    out: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                for child in (task / "children").read_text().split():
                    with contextlib.suppress(OSError):
                        out[int(child)] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                        todo.append(int(child))
    return out


def _alive(pid: int, cmdline: str) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        now = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return state != "Z" and now == cmdline  # the same process, not a reused pid


def test_sigterm_stops_everything_the_benchmark_started(tmp_path: Path) -> None:
    log = tmp_path / "bench.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "epp", "bench", "flow", "--quick", "--arms", "critical-only",
             "--run-dir", str(tmp_path / "run")], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    kids: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 90
        # Up: two simulated pods, the EPP and Envoy.
        while time.monotonic() < deadline and proc.poll() is None:
            kids = _descendants(proc.pid)
            if (sum(" sim " in c for c in kids.values()) >= 2 and any(" serve " in c for c in kids.values())
                    and any("envoy" in c for c in kids.values())):
                break
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()
        assert any("envoy" in c for c in kids.values()), (kids, log.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM, log.read_text()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p, c) for p, c in kids.items()):
            time.sleep(0.1)
        assert not [c for p, c in kids.items() if _alive(p, c)], log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid, cmd in kids.items():
            if _alive(pid, cmd):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
