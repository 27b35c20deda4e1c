"""The precise scorer against real simulator processes (`epp sim`) over HTTP and ZMQ.

Proves interop end to end: the pods tokenize, hash and publish; the EPP tokenizes and hashes
on its own and must land on the same block hashes (its hash check confirms every published
hash) and predict exactly the cached tokens the pod then reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.prefixcache import start_services, stop_services
from epp.prefixcache.config import DEFAULT_REPLAY_PORT_LABEL, DEFAULT_SOCKET_PORT_LABEL
from epp.scheduling.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from epp.scheduling.registry import PluginContext, parse_params
from epp.scheduling.types import CycleState, LLMRequest
from tests.helpers.procs import sim_pods_with_kv_events

pytestmark = pytest.mark.integration

PODS = 2


@pytest.fixture(scope="module")
def sim_pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, int]]]:
    with sim_pods_with_kv_events(tmp_path_factory.mktemp("sim"), PODS) as pods:
        yield pods


def epp_side(pods: list[dict[str, int]], **params: Any) -> tuple[PrecisePrefixCacheScorer, list[Endpoint],
                                                                 PluginContext]:
    ds = Datastore()
    eps = [ds.upsert_endpoint(Endpoint(
        name=f"sim-{i}", address="127.0.0.1", port=p["port"],
        labels={DEFAULT_SOCKET_PORT_LABEL: str(p["events"]), DEFAULT_REPLAY_PORT_LABEL: str(p["replay"])},
    )) for i, p in enumerate(pods)]
    ctx = PluginContext(datastore=ds, services={"metrics.registry": CollectorRegistry()})
    scorer = PrecisePrefixCacheScorer(
        name="precise", params=parse_params(PrecisePrefixCacheScorer.Params, params, "test"), ctx=ctx)
    return scorer, eps, ctx


async def wait_until(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"condition not met within {timeout}s"
        await asyncio.sleep(0.05)


def request_for(body: dict[str, Any]) -> LLMRequest:
    chat = "messages" in body
    return LLMRequest(request_id="r", model="m", target_model="m", prompt=body.get("prompt"),
                      messages=body.get("messages"), is_chat=chat, body=body)


async def test_precise_scores_follow_the_simulators_caches(sim_pods: list[dict[str, int]]) -> None:
    scorer, eps, ctx = epp_side(sim_pods)
    await start_services(ctx.services)
    manager = scorer.runtime.manager
    try:
        await wait_until(lambda: all(manager.subscribers[ep.key].stats.connected for ep in eps))
        system = " ".join(f"policy{i}" for i in range(300))
        completion = {"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": system + " Q: first?",
                      "max_tokens": 1}
        chat = {"model": "meta-llama/Llama-3.1-8B-Instruct", "max_tokens": 1,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hello"}]}
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(f"http://127.0.0.1:{sim_pods[1]['port']}/v1/completions", json=completion)
            assert r.status_code == 200, r.text
            r = await client.post(f"http://127.0.0.1:{sim_pods[0]['port']}/v1/chat/completions", json=chat)
            assert r.status_code == 200, r.text

            def scores(body: dict[str, Any]) -> list[float]:
                return scorer.score(CycleState(), request_for(body), eps)

            await wait_until(lambda: scores(completion) == [0.0, 1.0] and scores(chat) == [1.0, 0.0])
            assert all(manager.has_events(ep.key) for ep in eps)

            # The pod reports exactly the cached tokens the EPP predicted for a new question.
            follow_up = {**completion, "prompt": system + " Q: second question?"}
            state = CycleState()
            scorer.score(state, request_for(follow_up), eps)
            predicted = state["precise.cached-tokens"][eps[1].key]
            r = await client.post(f"http://127.0.0.1:{sim_pods[1]['port']}/v1/completions", json=follow_up)
            cached = r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert predicted == cached > 0

        checker = scorer.runtime.checker
        assert checker is not None
        assert checker.totals.stored_checked > 0 and checker.totals.stored_mismatched == 0
        for ep in eps:
            stats = manager.subscribers[ep.key].stats
            assert stats.decode_errors == 0 and stats.malformed_frames == 0
    finally:
        await stop_services(ctx.services)


async def test_wrong_hash_seed_is_detected_from_live_events(sim_pods: list[dict[str, int]]) -> None:
    scorer, eps, ctx = epp_side(sim_pods, tokenProcessorConfig={"hashSeed": "not-the-pods-seed"},
                                hashCheck={"minSamples": 4})
    await start_services(ctx.services)
    manager = scorer.runtime.manager
    checker = scorer.runtime.checker
    assert checker is not None
    try:
        await wait_until(lambda: manager.subscribers[eps[0].key].stats.connected)
        prompt = " ".join(f"fresh{i}" for i in range(120))
        body = {"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": prompt, "max_tokens": 1}
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(f"http://127.0.0.1:{sim_pods[0]['port']}/v1/completions", json=body)
            assert r.status_code == 200
        await wait_until(lambda: checker.mismatch_ratio(eps[0].key) >= 0.5)
        assert scorer.score(CycleState(), request_for(body), eps)[0] == 0.0
    finally:
        await stop_services(ctx.services)
