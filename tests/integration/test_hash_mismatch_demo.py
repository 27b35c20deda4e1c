"""Mismatch demo: simulator pods configured with different hash settings than the EPP.

Each pod differs from the EPP (sha256, PYTHONHASHSEED 42, blocks of 16) in one setting; the
EPP's stored-hash check must name that setting from the pods' live KV events within 10 s,
with the default hashCheck settings. A pod publishing raw digest bytes
(VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0) is not a mismatch: the index folds both forms.

Run it as a demo (prints the EPP's error lines):
    .venv/bin/python -m pytest -s -q tests/integration/test_hash_mismatch_demo.py
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.localstack.stack import free_ports
from epp.prefixcache import start_services, stop_services
from epp.prefixcache.config import DEFAULT_SOCKET_PORT_LABEL
from epp.scheduling.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from epp.scheduling.registry import PluginContext, parse_params
from epp.scheduling.types import CycleState, LLMRequest
from tests.helpers.procs import PYTHON, running, wait_http

pytestmark = pytest.mark.integration

EPP_SETTINGS = {"hashAlgo": "sha256", "hashSeed": "42", "blockSize": 16}
# pod name -> (its settings, the words the EPP's diagnosis must contain; None: must match)
PODS: dict[str, tuple[dict[str, Any], list[str] | None]] = {
    "algo": ({"prefix_caching_hash_algo": "sha256_cbor", "hash_seed": "42"},
             ["tokenProcessorConfig.hashAlgo", "the pod uses 'sha256_cbor'"]),
    "seed": ({"hash_seed": "7"}, ["tokenProcessorConfig.hashSeed", "PYTHONHASHSEED differs"]),
    # vLLM without PYTHONHASHSEED seeds sha256 from the fixed "vllm-none-hash".
    "unset-seed": ({"hash_seed": "vllm-none-hash"}, ["tokenProcessorConfig.hashSeed", "'vllm-none-hash'"]),
    "block-size": ({"block_size": 32, "hash_seed": "42"},
                   ["tokenProcessorConfig.blockSize", "blocks of 32 tokens"]),
    "bytes-hashes": ({"kv_events_int_hashes": False, "hash_seed": "42"}, None),
}


@pytest.fixture(scope="module")
def sim_pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, int]]]:
    workdir: Path = tmp_path_factory.mktemp("mismatch")
    # Distinct ports: free_port() picks each at random, so two calls can return the same one
    # (a CI run lost a pod to "Address already in use" that way).
    picked = iter(free_ports(2 * len(PODS)))
    ports = {name: {"port": next(picked), "events": next(picked)} for name in PODS}
    config = {
        "defaults": {"time_scale": 0.01, "num_gpu_blocks": 2048, "kv_events_bind": True},
        "pods": [{"name": name, "port": ports[name]["port"],
                  "kv_events_endpoint": f"tcp://127.0.0.1:{ports[name]['events']}", **settings}
                 for name, (settings, _) in PODS.items()],
    }
    (workdir / "sim.yaml").write_text(yaml.safe_dump(config))
    args = [PYTHON, "-m", "epp", "sim", "--config", str(workdir / "sim.yaml"), "--log-level", "WARNING"]
    with running(args, workdir / "sim.log") as proc:
        for p in ports.values():
            wait_http(f"http://127.0.0.1:{p['port']}/health")
        yield ports
        assert proc.alive(), proc.output()[-2000:]


async def test_detector_names_the_differing_setting_within_10s(
    sim_pods: dict[str, dict[str, int]], caplog: pytest.LogCaptureFixture
) -> None:
    ds = Datastore()
    eps = {name: ds.upsert_endpoint(Endpoint(name=name, address="127.0.0.1", port=p["port"],
                                             labels={DEFAULT_SOCKET_PORT_LABEL: str(p["events"])}))
           for name, p in sim_pods.items()}
    ctx = PluginContext(datastore=ds, services={"metrics.registry": CollectorRegistry()})
    params = parse_params(PrecisePrefixCacheScorer.Params, {"tokenProcessorConfig": EPP_SETTINGS}, "demo")
    scorer = PrecisePrefixCacheScorer(name="precise", params=params, ctx=ctx)
    checker = scorer.runtime.checker
    assert checker is not None
    manager = scorer.runtime.manager
    await start_services(ctx.services)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not all(sub.stats.connected for sub in manager.subscribers.values()):
            assert loop.time() < deadline, "subscribers did not connect"
            await asyncio.sleep(0.05)
        started = time.monotonic()
        prompt = " ".join(f"demo{i}" for i in range(700))  # ~44 blocks of 16: one window of samples
        body = {"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": prompt, "max_tokens": 1}
        with caplog.at_level(logging.ERROR, logger="epp.prefixcache.hash_check"):
            async with httpx.AsyncClient(timeout=10) as client:
                for p in sim_pods.values():
                    r = await client.post(f"http://127.0.0.1:{p['port']}/v1/completions", json=body)
                    assert r.status_code == 200, r.text

            def named(pod: str) -> bool:
                words = PODS[pod][1]
                health = checker.pods().get(eps[pod].key)
                if words is None:
                    return health is not None and len(health.stored) >= checker.min_samples
                return health is not None and all(w in health.diagnosis for w in words) \
                    and checker.mismatch_ratio(eps[pod].key) >= checker.threshold
            while not all(named(pod) for pod in PODS):
                assert loop.time() < deadline, {p: checker.pods().get(eps[p].key) for p in PODS}
                await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        for pod, (_, words) in PODS.items():
            mine = [e for e in errors if f"pod {eps[pod].key} " in e]
            if words is None:
                assert not mine and checker.mismatch_ratio(eps[pod].key) == 0.0
                assert checker.pod(eps[pod].key).hash_form == "bytes"
            else:
                assert mine and all(w in mine[0] for w in words), mine
                print(f"[{elapsed:.2f}s] {mine[0]}")
        assert elapsed < 10
        # The bytes-hash pod matches the EPP's request hashes for real.
        request = LLMRequest(request_id="r", model="m", target_model="m", prompt=prompt, body=body)
        scores = scorer.score(CycleState(), request, list(eps.values()))
        assert scores[list(PODS).index("bytes-hashes")] == 1.0
    finally:
        await stop_services(ctx.services)
