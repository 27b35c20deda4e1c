"""The local stack's supervisor: crashed children come back with exponential backoff; children
stopped on purpose stay stopped."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from epp.localstack.stack import LocalStack, StackConfig

CRASH = [sys.executable, "-c", "raise SystemExit(3)"]
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def _stack(tmp_path: Path) -> LocalStack:
    return LocalStack(StackConfig(run_dir=tmp_path, ports_free=True, restart_backoff_s=(0.05, 0.2)))


def _supervise_for(stack: LocalStack, seconds: float, crashes: int = 0) -> None:
    """Run the supervisor for `seconds`, or until it has seen `crashes` crashes (busy machine)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (crashes == 0 or len(stack.restarts) < crashes):
        stack.supervise_once()
        time.sleep(0.01)


def test_a_crashing_child_is_restarted_with_growing_capped_backoff(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    try:
        stack._spawn("crasher", CRASH)
        _supervise_for(stack, 15, crashes=4)
        delays = [delay for _, name, code, delay in stack.restarts if name == "crasher" and code == 3]
        assert len(delays) >= 4
        assert delays[:4] == [0.05, 0.1, 0.2, 0.2]  # doubling, capped at the largest
    finally:
        stack.stop()


def test_killed_children_come_back_stopped_ones_do_not(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    try:
        stack._spawn("pod", SLEEP)
        stack._spawn("other", SLEEP)
        first = stack.procs["pod"].pid
        stack.kill("pod")  # a crash: comes back
        stack.stop_one("other")  # on purpose: stays down
        _supervise_for(stack, 0.5)
        assert stack.procs["pod"].pid != first and stack.procs["pod"].poll() is None
        assert stack.procs["other"].poll() is not None
        assert [name for _, name, _, _ in stack.restarts] == ["pod"]
        stack.resume("other")
        assert stack.procs["other"].poll() is None
    finally:
        stack.stop()
    assert all(p.poll() is not None for p in stack.procs.values())
