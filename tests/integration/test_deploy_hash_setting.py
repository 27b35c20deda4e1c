"""The shipped hash setting works end to end: a simulator started with the exact arguments and
environment of deploy/sim/sim-deployment.yaml (only addresses moved to loopback) publishes KV
events, and the precise scorer built from the EPP ConfigMap of deploy/gateway-api lands on
the same block hashes (its hash check confirms every published hash) and scores the pod
that holds the prompt. The P/D pods' old setting (sha256) is caught as a mismatch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.prefixcache import start_services, stop_services
from epp.prefixcache.config import DEFAULT_REPLAY_PORT_LABEL, DEFAULT_SOCKET_PORT_LABEL
from epp.scheduling.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from epp.scheduling.registry import PluginContext, parse_params
from epp.scheduling.types import CycleState, LLMRequest
from tests.helpers.procs import PYTHON, free_port, running, wait_http

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _sim_container() -> dict[str, Any]:
    dep = yaml.safe_load((REPO / "deploy" / "sim" / "sim-deployment.yaml").read_text())
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dict(c)


def _shipped_precise_params() -> dict[str, Any]:
    cm = yaml.safe_load((REPO / "deploy" / "gateway-api" / "epp-config.yaml").read_text())
    config = yaml.safe_load(cm["data"]["config.yaml"])
    (plugin,) = [p for p in config["plugins"] if p["type"] == "precise-prefix-cache-scorer"]
    params: dict[str, Any] = plugin["parameters"]
    return params


def _loopback_args(args: list[str], port: int, events: int, replay: int) -> list[str]:
    out = []
    for a in args:
        flag = a.split("=", 1)[0]
        out.append({"--host": "--host=127.0.0.1", "--port": f"--port={port}",
                    "--kv-events-endpoint": f"--kv-events-endpoint=tcp://127.0.0.1:{events}",
                    "--kv-events-replay-endpoint": f"--kv-events-replay-endpoint=tcp://127.0.0.1:{replay}",
                    }.get(flag, a))
    return out


async def _wait(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"condition not met within {timeout}s"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("pod_algo", ["as shipped", "sha256"])
async def test_shipped_hash_setting_matches_between_sim_and_epp(tmp_path: Path, pod_algo: str) -> None:
    c = _sim_container()
    port, events, replay = free_port(), free_port(), free_port()
    args = _loopback_args(c["args"], port, events, replay)
    if pod_algo != "as shipped":  # what the P/D pods used before issue 17
        args = [a if not a.startswith("--prefix-caching-hash-algo=") else f"--prefix-caching-hash-algo={pod_algo}"
                for a in args]
    assert "--prefix-caching-hash-algo=sha256_cbor" in c["args"]
    env = {e["name"]: e["value"] for e in c["env"]}  # the manifest's (PYTHONHASHSEED)
    cmd = [PYTHON, "-m", *c["command"], *args, "--time-scale=0.01", "--log-level=WARNING"]
    with running(cmd, tmp_path / "sim.log", env=env):
        wait_http(f"http://127.0.0.1:{port}/health")
        ds = Datastore()
        ep = ds.upsert_endpoint(Endpoint(name="sim-0", address="127.0.0.1", port=port, labels={
            DEFAULT_SOCKET_PORT_LABEL: str(events), DEFAULT_REPLAY_PORT_LABEL: str(replay)}))
        ctx = PluginContext(datastore=ds, services={"metrics.registry": CollectorRegistry()})
        params = {**_shipped_precise_params(), "hashCheck": {"minSamples": 4}}
        scorer = PrecisePrefixCacheScorer(
            name="precise", params=parse_params(PrecisePrefixCacheScorer.Params, params, "epp-config.yaml"),
            ctx=ctx)
        await start_services(ctx.services)
        manager, checker = scorer.runtime.manager, scorer.runtime.checker
        assert checker is not None
        try:
            await _wait(lambda: manager.subscribers[ep.key].stats.connected)
            body = {"model": MODEL, "prompt": " ".join(f"shipped{i}" for i in range(200)), "max_tokens": 1}
            request = LLMRequest(request_id="r", model=MODEL, target_model=MODEL, prompt=body["prompt"],
                                 messages=None, is_chat=False, body=body)
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.post(f"http://127.0.0.1:{port}/v1/completions", json=body)
                assert r.status_code == 200, r.text
            if pod_algo == "as shipped":
                await _wait(lambda: scorer.score(CycleState(), request, [ep]) == [1.0])
                assert checker.totals.stored_checked > 0 and checker.totals.stored_mismatched == 0
            else:
                await _wait(lambda: checker.mismatch_ratio(ep.key) >= 0.5)
                assert scorer.score(CycleState(), request, [ep]) == [0.0]
        finally:
            await stop_services(ctx.services)
