"""Precise prefix routing with the REAL Llama-3.1 tokenizer on both sides, end to end.

`epp sim` processes run with `--tokenizer DIR` (the model's tokenizer.json and chat template)
and publish KV events over ZMQ; the EPP's precise scorer tokenizes the same requests on its
own, with the same files (locally, or through the pods' /tokenize), and must land on the
same block hashes: a precise-prefix hit, every published hash confirmed by the hash check,
and exactly the cached tokens the pod then reports. The pod's prompt token counts are
checked against transformers (what a real vLLM computes with these files). A scorer with
the simple fallback tokenizer must miss: the test can tell the tokenizers apart.
"""

from __future__ import annotations

import asyncio
import os
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
from epp.tokenization.remote import RemotePromptTokenizer
from tests.helpers.procs import sim_pods_with_kv_events
from tests.helpers.tokenizer_fixture import llama3_dir

pytestmark = pytest.mark.integration
os.environ["HF_HUB_OFFLINE"] = "1"

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PODS = 2
SYSTEM = " ".join(f"Rule {i}: answer politely and cite the policy section." for i in range(40))


@pytest.fixture(scope="module")
def sim_pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, int]]]:
    workdir = tmp_path_factory.mktemp("sim-real-tokenizer")
    with sim_pods_with_kv_events(workdir, PODS, ["--tokenizer", llama3_dir()]) as pods:
        yield pods


@pytest.fixture(scope="module")
def reference() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama3_dir(), local_files_only=True)


def epp_side(pods: list[dict[str, int]], tokenizer: str) -> tuple[PrecisePrefixCacheScorer, list[Endpoint],
                                                                   PluginContext]:
    ds = Datastore()
    eps = [ds.upsert_endpoint(Endpoint(
        name=f"sim-{i}", address="127.0.0.1", port=p["port"],
        labels={DEFAULT_SOCKET_PORT_LABEL: str(p["events"]), DEFAULT_REPLAY_PORT_LABEL: str(p["replay"])},
    )) for i, p in enumerate(pods)]
    ctx = PluginContext(datastore=ds, services={"metrics.registry": CollectorRegistry()})
    params = parse_params(PrecisePrefixCacheScorer.Params, {"tokenizer": tokenizer}, "test")
    return PrecisePrefixCacheScorer(name="precise", params=params, ctx=ctx), eps, ctx


async def wait_until(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"condition not met within {timeout}s"
        await asyncio.sleep(0.05)


def request_for(body: dict[str, Any]) -> LLMRequest:
    return LLMRequest(request_id="r", model="m", target_model="m", prompt=body.get("prompt"),
                      messages=body.get("messages"), is_chat="messages" in body, body=body)


def _ids(result: Any) -> list[int]:
    ids = result["input_ids"] if hasattr(result, "keys") else result
    return [int(i) for i in ids]


async def test_epp_and_simulator_agree_on_real_block_hashes(sim_pods: list[dict[str, int]],
                                                             reference: Any) -> None:
    scorer, eps, ctx = epp_side(sim_pods, llama3_dir())
    await start_services(ctx.services)
    manager = scorer.runtime.manager
    tag = os.urandom(4).hex()  # fresh prefixes: the module's pods are shared between tests
    try:
        await wait_until(lambda: all(manager.subscribers[ep.key].stats.connected for ep in eps))
        completion = {"model": MODEL, "prompt": f"[{tag}] {SYSTEM} Q: first?", "max_tokens": 1}
        messages = [{"role": "system", "content": f"[{tag}] {SYSTEM}"}, {"role": "user", "content": "hello"}]
        chat = {"model": MODEL, "max_tokens": 1, "messages": messages}
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(f"http://127.0.0.1:{sim_pods[1]['port']}/v1/completions", json=completion)
            assert r.status_code == 200, r.text
            # The pod counts tokens like a real vLLM with these files (transformers is the reference).
            assert r.json()["usage"]["prompt_tokens"] == len(_ids(reference(completion["prompt"]).input_ids))
            r = await client.post(f"http://127.0.0.1:{sim_pods[0]['port']}/v1/chat/completions", json=chat)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["prompt_tokens"] == len(_ids(reference.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=True)))

            def scores(body: dict[str, Any]) -> list[float]:
                return scorer.score(CycleState(), request_for(body), eps)

            await wait_until(lambda: scores(completion) == [0.0, 1.0] and scores(chat) == [1.0, 0.0])

            follow_up = {**chat, "messages": [*messages, {"role": "assistant", "content": "Hi."},
                                              {"role": "user", "content": "Now a second question?"}]}
            state = CycleState()
            scorer.score(state, request_for(follow_up), eps)
            predicted = state["precise.cached-tokens"][eps[0].key]
            r = await client.post(f"http://127.0.0.1:{sim_pods[0]['port']}/v1/chat/completions", json=follow_up)
            cached = r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert predicted == cached > 16 * 10  # the whole shared system prompt, block-aligned

        checker = scorer.runtime.checker
        assert checker is not None
        assert checker.totals.stored_checked > 0 and checker.totals.stored_mismatched == 0

        # Negative control: the simple fallback tokenizer hashes other tokens and never hits.
        simple, simple_eps, _ = epp_side(sim_pods, "simple")
        index, key = scorer.runtime.index, eps[0].key
        real = scorer.block_hashes(request_for(chat), eps).hashes
        fallback = simple.block_hashes(request_for(chat), simple_eps).hashes
        assert index.longest_prefix(real, [key]).get(key, 0) == len(real) > 0
        assert fallback and index.longest_prefix(fallback, [key]).get(key, 0) == 0
    finally:
        await stop_services(ctx.services)


async def test_pod_tokenize_mode_agrees_too(sim_pods: list[dict[str, int]]) -> None:
    scorer, eps, ctx = epp_side(sim_pods, "vllm-tokenize")
    assert isinstance(scorer.tokenizer, RemotePromptTokenizer)
    await start_services(ctx.services)
    manager = scorer.runtime.manager
    tag = os.urandom(4).hex()
    try:
        await wait_until(lambda: all(manager.subscribers[ep.key].stats.connected for ep in eps))
        chat = {"model": MODEL, "max_tokens": 1,
                "messages": [{"role": "system", "content": f"[{tag}] {SYSTEM}"}, {"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(f"http://127.0.0.1:{sim_pods[1]['port']}/v1/chat/completions", json=chat)
            assert r.status_code == 200, r.text
        # The first decision starts the /tokenize fetch; later ones use the cached tokens.
        await wait_until(lambda: scorer.score(CycleState(), request_for(chat), eps) == [0.0, 1.0])
    finally:
        await stop_services(ctx.services)
