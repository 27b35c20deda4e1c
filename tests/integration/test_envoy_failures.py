"""Failure handling through the real Envoy: empty or unhealthy pool, EPP down (FailOpen/FailClose)."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from epp.localstack.stack import LocalStack
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 2}


def _post(stack: LocalStack) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/completions", json=BODY, timeout=10)


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_fail_close(stack_factory: StackFactory) -> None:
    stack = stack_factory(pods=2, time_scale=0.1, failure_mode="FailClose", kv_events=False)
    assert _post(stack).status_code == 200

    # Empty pool: the endpoints file loses its pods (the EPP watches it).
    endpoints = stack.cfg.run_dir / "endpoints.yaml"
    original = endpoints.read_text()
    endpoints.write_text(yaml.safe_dump({"pods": []}))
    _wait_for(lambda: _post(stack).status_code == 503)
    r = _post(stack)
    assert r.json()["error"]["code"] == "empty_pool"
    endpoints.write_text(original)
    _wait_for(lambda: _post(stack).status_code == 200)

    # All pods unhealthy: the simulators stop; their metrics go stale and they are dropped.
    # Until their metrics go stale (1 s) Envoy's connection to a dead pod fails (a 503 from
    # Envoy, in the same error shape); then the EPP itself answers.
    for pod in stack.pods:
        stack.stop_one(pod.name)
    _wait_for(lambda: _post(stack).json()["error"]["code"] == "no_healthy_endpoint")
    r = _post(stack)
    assert r.status_code == 503 and r.headers["content-type"].startswith("application/json")
    # The EPP still answers (the 503 above is its own), so it stays ready: readiness does not
    # follow pod health, or stale scrapes would pull every EPP replica out of its Service.
    ready = httpx.get(f"http://127.0.0.1:{stack.cfg.health_port}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["healthy_endpoints"] == 0

    # EPP down with FailClose: Envoy answers 503 itself, never hangs.
    stack.stop_one("epp")
    t0 = time.monotonic()
    r = _post(stack)
    assert r.status_code == 503
    assert time.monotonic() - t0 < 5


def test_fail_open(stack_factory: StackFactory) -> None:
    stack = stack_factory(pods=2, time_scale=0.1, failure_mode="FailOpen", kv_events=False)
    assert _post(stack).status_code == 200
    stack.stop_one("epp")
    # Envoy skips the unreachable EPP and load-balances over the pool itself.
    served = set()
    for _ in range(6):
        r = _post(stack)
        assert r.status_code == 200, r.text
        served.add(r.headers["x-sim-pod"])
    assert served <= {p.name for p in stack.pods}
