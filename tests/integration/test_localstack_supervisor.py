"""`epp run-local` behaves like a small cluster: a crashed pod or EPP is restarted (with
backoff, logged) while the stack keeps serving, and Ctrl-C still stops everything."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.procs import REPO

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _children(pid: int) -> dict[int, str]:
    """Direct children of pid -> their command line."""
    out: dict[int, str] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):  # it exited meanwhile
                out[int(child)] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return out


def _child(pid: int, marker: str) -> int:
    found = [c for c, cmd in _children(pid).items() if marker in cmd]
    assert len(found) == 1, (marker, _children(pid))
    return found[0]


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_local_restarts_crashed_children_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "epp", "run-local", "--pods", "2", "--free-ports", "--time-scale", "0.1",
             "--run-dir", str(tmp_path / "run")], stdout=out, stderr=err, cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait(lambda: "The local stack is up" in out_path.read_text() or proc.poll() is not None, 90,
              "the stack to come up")
        assert proc.poll() is None, err_path.read_text()
        url = re.search(r"API \(Envoy\):\s+(http://127\.0\.0\.1:\d+)", out_path.read_text())
        assert url is not None
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 2}

        def serving() -> bool:
            try:
                return httpx.post(f"{url.group(1)}/v1/completions", json=body, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        assert serving()
        for marker, name in (("--name vllm-0", "vllm-0"), ("epp serve", "epp")):
            old = _child(proc.pid, marker)
            os.kill(old, signal.SIGKILL)
            # A dead pod: the rest of the pool serves at once. A dead EPP: FailClose 503s until
            # it is back (docs/reliability.md); either way the stack does not exit.
            if name == "vllm-0":
                assert all(serving() for _ in range(10))
            _wait(lambda m=marker, o=old: any(m in cmd and c != o for c, cmd in _children(proc.pid).items()),
                  30, f"{name} to be restarted")
            assert proc.poll() is None
            _wait(serving, 60, f"the stack to serve again after {name} was restarted")
            assert f"{name} exited with code -9; restarting" in err_path.read_text()
        children = list(_children(proc.pid))
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(30) == 0
        for child in children:
            assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text(), child
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
