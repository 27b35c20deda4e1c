"""The precise-prefix-cache-scorer plugin against events of the simulator's real block pool."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.prefixcache import SERVICE_KEY, stop_services
from epp.prefixcache.block_hash import BlockHasher, lora_extra_keys
from epp.prefixcache.events import AllBlocksCleared
from epp.prefixcache.index import BlockKey
from epp.prefixcache.runtime import KVEventsRuntime
from epp.scheduling.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from epp.scheduling.registry import PluginContext, parse_params
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, SchedulingResult
from epp.sim.kv_cache import PrefixCachingBlockPool
from epp.tokenization.chat_template import apply_chat_template
from epp.tokenization.tokenizer import get_tokenizer

from .kv_fixtures import payload, serve

WORDS = [f"w{i}" for i in range(16)]


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


class Pod:
    """A simulated pod: real block pool + its KV-event sequence."""

    def __init__(self, ep: Endpoint, blocks: int = 256) -> None:
        self.ep = ep
        self.pool = PrefixCachingBlockPool(num_blocks=blocks, block_size=16)
        self.seq = 0

    def publish(self, runtime: KVEventsRuntime) -> None:
        events = self.pool.drain_events()
        if events:
            asyncio.run(runtime.manager.local_stream(self.ep.key).handle(self.seq, payload(events)))
            self.seq += 1


def setup(n: int = 3, params: dict[str, Any] | None = None) -> tuple[PrecisePrefixCacheScorer, list[Pod]]:
    ds = Datastore()
    pods = [Pod(ds.upsert_endpoint(Endpoint(name=f"pod-{i}", address="127.0.0.1", port=8000 + i)))
            for i in range(n)]
    ctx = PluginContext(datastore=ds, services={"metrics.registry": CollectorRegistry()}, source="t.yaml")
    p = parse_params(PrecisePrefixCacheScorer.Params, params or {}, "t.yaml: plugin 'precise'")
    return PrecisePrefixCacheScorer(name="precise", params=p, ctx=ctx), pods


def completion(prompt: str, rid: str = "r") -> LLMRequest:
    return LLMRequest(request_id=rid, model="m", target_model="m", prompt=prompt, body={"prompt": prompt})


def test_scores_longest_cached_prefix_from_events() -> None:
    scorer, pods = setup()
    rng = random.Random(3)
    system = text(rng, 200)
    tokens = scorer.tokenizer.encode(system)
    serve(pods[0].pool, scorer.hasher, tokens)  # pod-0 computed the whole prompt
    serve(pods[1].pool, scorer.hasher, tokens[: 2 * 16])  # pod-1 only its first 2 blocks
    for pod in pods[:2]:
        pod.publish(scorer.runtime)
    request = completion(system + " and a new question")
    state = CycleState()
    scores = scorer.score(state, request, [p.ep for p in pods])
    total = len(state[scorer.state_key].hashes)
    assert total >= 5
    assert scores[0] >= (len(tokens) // 16) / total > scores[1] == 2 / total
    assert scores[2] == 0.0  # no events and no routing history
    cached = state["precise.cached-tokens"]
    assert cached[pods[1].ep.key] == 32
    assert state["precise.prompt-tokens"] == len(scorer.token_ids(request))


def test_the_matches_produced_before_the_filters_serve_the_profiles_score() -> None:
    """The latency runtime asks for the cycle's matches before the filters
    (produce_prefix_matches). When no filter drops a candidate, the profile's score() on the
    same candidates reuses them: one index lookup per decision, the same scores as a cycle
    that only scores. Candidates a filter narrowed are looked up again."""
    scorer, pods = setup()
    rng = random.Random(5)
    system = text(rng, 200)
    tokens = scorer.tokenizer.encode(system)
    serve(pods[0].pool, scorer.hasher, tokens)
    serve(pods[1].pool, scorer.hasher, tokens[: 3 * 16])
    for pod in pods[:2]:
        pod.publish(scorer.runtime)
    lookups: list[list[str]] = []
    lookup = scorer._lookup

    def counted(hashes: list[BlockKey], evented: list[str]) -> dict[str, int]:
        lookups.append(evented)
        return lookup(hashes, evented)

    scorer._lookup = counted  # type: ignore[method-assign]
    request = completion(system + " and a new question")
    eps = [p.ep for p in pods]
    only_scored = scorer.score(CycleState(), request, eps)
    assert only_scored[0] > only_scored[1] > 0.0 and len(lookups) == 1
    state = CycleState()
    scorer.produce_prefix_matches(state, request, eps)
    assert scorer.score(state, request, eps) == only_scored and len(lookups) == 2
    assert state["precise.cached-tokens"][pods[1].ep.key] == 48
    assert scorer.score(state, request, eps[1:]) == only_scored[1:] and len(lookups) == 3


def test_chat_requests_are_hashed_through_the_chat_template() -> None:
    scorer, pods = setup(2)
    messages = [{"role": "system", "content": text(random.Random(1), 150)},
                {"role": "user", "content": "hi"}]
    tokens = get_tokenizer("simple").encode(apply_chat_template(messages, add_generation_prompt=True))
    serve(pods[1].pool, scorer.hasher, tokens)
    pods[1].publish(scorer.runtime)
    request = LLMRequest(request_id="c", model="m", target_model="m", path="/v1/chat/completions",
                         messages=messages, is_chat=True, body={"messages": messages})
    assert scorer.score(CycleState(), request, [p.ep for p in pods]) == [0.0, 1.0]


def test_tokenization_is_done_once_per_cycle() -> None:
    scorer, pods = setup(2)
    calls = 0
    encode = scorer.tokenizer.encode

    def counting(s: str) -> list[int]:
        nonlocal calls
        calls += 1
        return encode(s)

    scorer.tokenizer.encode = counting  # type: ignore[method-assign]
    state = CycleState()
    request = completion(text(random.Random(2), 100))
    scorer.score(state, request, [pods[0].ep])
    scorer.score(state, request, [pods[1].ep])  # second profile, same cycle
    assert calls == 1


def test_pods_without_events_fall_back_to_approximate_routing_history() -> None:
    scorer, pods = setup(2)
    prompt = text(random.Random(4), 120)
    state = CycleState()
    request = completion(prompt)
    assert scorer.score(state, request, [p.ep for p in pods]) == [0.0, 0.0]
    decision = SchedulingResult({"default": ProfileRunResult([pods[1].ep])}, "default")
    scorer.pre_request(state, request, decision)
    again = scorer.score(CycleState(), completion(prompt, "r2"), [p.ep for p in pods])
    assert again[0] == 0.0 and again[1] > 0.9
    # Once the pod publishes events, its events alone count.
    pods[1].pool.reset()
    pods[1].publish(scorer.runtime)
    assert scorer.score(CycleState(), completion(prompt, "r3"), [p.ep for p in pods]) == [0.0, 0.0]


def test_reported_hits_the_index_never_predicted_feed_the_hash_check() -> None:
    scorer, pods = setup(1, {"hashCheck": {"minSamples": 4, "window": 8}})
    checker = scorer.runtime.checker
    assert checker is not None
    serve(pods[0].pool, scorer.hasher, [1] * 16)
    pods[0].publish(scorer.runtime)  # pod-0 now publishes events
    for i in range(4):
        state = CycleState()
        request = completion(text(random.Random(i), 80), f"q{i}")
        scorer.score(state, request, [pods[0].ep])
        scorer.pre_request(state, request, SchedulingResult({"d": ProfileRunResult([pods[0].ep])}, "d"))
        scorer.post_response(request, pods[0].ep, {"status": 200, "cached_tokens": 64})
    assert checker.totals.hit_checked == 4
    assert checker.mismatch_ratio(pods[0].ep.key) == 1.0


def test_metrics_are_exported_and_services_stop() -> None:
    scorer, pods = setup(1)
    serve(pods[0].pool, scorer.hasher, list(range(1, 65)))
    pods[0].publish(scorer.runtime)
    registry = scorer.runtime.registry
    assert registry is not None
    text_out = generate_latest(registry).decode()
    assert 'epp_kvevents_events_total{pod="default/pod-0"} 1.0' in text_out
    assert "epp_kvevents_index_blocks 4.0" in text_out
    assert "epp_kvevents_hash_checks_total{result=\"stored_match\"} 4.0" in text_out
    services = {SERVICE_KEY: scorer.runtime}
    asyncio.run(stop_services(services))
    assert services == {}
    assert "epp_kvevents_index_blocks" not in generate_latest(registry).decode()


def test_hasher_matches_configured_settings() -> None:
    tp = {"blockSize": 32, "hashSeed": 5, "hashAlgo": "sha256_cbor"}
    scorer, _ = setup(1, {"tokenProcessorConfig": tp})
    assert (scorer.hasher.block_size, scorer.hasher.seed, scorer.hasher.algo) == (32, "5", "sha256_cbor")
    assert scorer.hasher.none_hash == BlockHasher("sha256_cbor", 32, "5").none_hash


def test_speculative_indexing_covers_the_window_before_events_arrive() -> None:
    scorer, pods = setup(2, {"speculativeIndexing": True, "speculativeTtl": "50ms"})
    plain, plain_pods = setup(2)
    for s, ps in ((scorer, pods), (plain, plain_pods)):
        for pod in ps:  # both pods publish events (nothing cached yet)
            asyncio.run(s.runtime.manager.local_stream(pod.ep.key).handle(0, payload([])))
    prompt = text(random.Random(9), 150)
    for s, ps in ((scorer, pods), (plain, plain_pods)):
        state = CycleState()
        s.score(state, completion(prompt), [p.ep for p in ps])
        s.pre_request(state, completion(prompt), SchedulingResult({"d": ProfileRunResult([ps[1].ep])}, "d"))
    # A second request with the same prompt before pod-1's KV events arrive:
    assert scorer.score(CycleState(), completion(prompt, "b"), [p.ep for p in pods]) == [0.0, 1.0]
    assert plain.score(CycleState(), completion(prompt, "b"), [p.ep for p in plain_pods]) == [0.0, 0.0]
    assert scorer.speculative is not None
    scorer._expire_speculation(float("inf"))  # TTL over, no confirming event came
    assert scorer.score(CycleState(), completion(prompt, "c"), [p.ep for p in pods]) == [0.0, 0.0]


def test_speculative_ttl_parsing() -> None:
    from epp.scheduling.plugins.precise_prefix_cache_scorer import parse_duration

    assert parse_duration("2s") == 2.0 and parse_duration("500ms") == 0.5
    assert parse_duration("1m") == 60.0 and parse_duration(3) == 3.0


def serve_with_adapter(pod: Pod, hasher: BlockHasher, tokens: list[int], adapter: str) -> None:
    """The pod runs the prompt under a LoRA adapter: vLLM hashes with the adapter's name."""
    hashes = hasher.hash_tokens(tokens, extra_keys=lora_extra_keys(adapter))
    blocks = pod.pool.allocate(len(hashes))
    assert blocks is not None
    pod.pool.cache_full_blocks(blocks, hashes, tokens[: len(hashes) * 16], None, adapter)
    pod.pool.free(blocks)


def lora_request(prompt: str, model: str) -> LLMRequest:
    return LLMRequest(request_id="r", model=model, target_model=model, prompt=prompt, body={"prompt": prompt})


def test_lora_key_comes_from_the_request_with_base_models() -> None:
    scorer, pods = setup(2, {"tokenProcessorConfig": {"baseModels": ["base"]}})
    prompt = text(random.Random(5), 120)
    tokens = scorer.tokenizer.encode(prompt)
    serve_with_adapter(pods[0], scorer.hasher, tokens, "sql-lora")
    pods[0].publish(scorer.runtime)
    serve(pods[1].pool, scorer.hasher, tokens)  # pod-1 cached the same text on the base model
    pods[1].publish(scorer.runtime)
    eps = [p.ep for p in pods]
    # The adapter is idle (in no pod's running/waiting metrics), yet its blocks match.
    assert not any(ep.metrics.active_loras or ep.metrics.waiting_loras for ep in eps)
    lora_scores = scorer.score(CycleState(), lora_request(prompt, "sql-lora"), eps)
    base_scores = scorer.score(CycleState(), lora_request(prompt, "base"), eps)
    assert lora_scores[0] > 0.9 and lora_scores[1] == 0.0
    assert base_scores[1] > 0.9 and base_scores[0] == 0.0


def test_lora_adapters_are_learned_from_events_without_base_models() -> None:
    scorer, pods = setup(2)
    prompt = text(random.Random(6), 120)
    tokens = scorer.tokenizer.encode(prompt)
    eps = [p.ep for p in pods]
    assert scorer.lora_adapter("sql-lora", eps) is None  # nothing known yet: the base model
    serve_with_adapter(pods[0], scorer.hasher, tokens, "sql-lora")
    pods[0].publish(scorer.runtime)
    assert scorer.lora_adapter("sql-lora", eps) == "sql-lora"
    scores = scorer.score(CycleState(), lora_request(prompt, "sql-lora"), eps)
    assert scores[0] > 0.9 and scores[1] == 0.0
    # An adapter once seen in a pod's lora metrics stays known after it went idle.
    eps[1].metrics.active_loras = frozenset({"chat-lora"})
    assert scorer.lora_adapter("chat-lora", eps) == "chat-lora"
    eps[1].metrics.active_loras = frozenset()
    assert scorer.lora_adapter("chat-lora", eps) == "chat-lora"


async def test_data_parallel_pod_scores_by_its_best_rank() -> None:
    ds = Datastore()
    eps = [ds.upsert_endpoint(Endpoint(name=f"dp-{i}", address="127.0.0.1", port=8000 + i)) for i in range(2)]
    ctx = PluginContext(datastore=ds, services={"metrics.registry": CollectorRegistry()}, source="t.yaml")
    params = parse_params(PrecisePrefixCacheScorer.Params, {"kvEventsConfig": {"dataParallelSize": 2}}, "t")
    scorer = PrecisePrefixCacheScorer(name="precise", params=params, ctx=ctx)
    await scorer.runtime.start()  # sockets connect lazily; events are fed to the streams here
    try:
        manager = scorer.runtime.manager
        assert sorted(manager.subscribers) == sorted(f"{ep.key}{r}" for ep in eps for r in ("", "#dp1"))
        prompt = text(random.Random(9), 100)
        tokens = scorer.tokenizer.encode(prompt)
        pools = {key: PrefixCachingBlockPool(num_blocks=64, block_size=16) for key in manager.subscribers}
        serve(pools[f"{eps[0].key}#dp1"], scorer.hasher, tokens)  # rank 1 of dp-0 has the prompt
        serve(pools[eps[1].key], scorer.hasher, tokens[:32])  # rank 0 of dp-1 has 2 blocks
        serve(pools[f"{eps[1].key}#dp1"], scorer.hasher, tokens[:16])
        for key, pool in pools.items():
            await manager.subscribers[key].stream.handle(0, payload(pool.drain_events() or [AllBlocksCleared()]))
        state = CycleState()
        scores = scorer.score(state, completion(prompt), eps)
        total = len(state[scorer.state_key].hashes)
        assert scores == [(len(tokens) // 16) / total, 2 / total]
    finally:
        await stop_services(ctx.services)


def test_hybrid_pod_is_scored_by_vllms_group_rule() -> None:
    from epp.prefixcache.events import BlockRemoved, BlockStored

    scorer, pods = setup(2)
    prompt = text(random.Random(12), 100)
    request = completion(prompt)
    state = CycleState()
    hashes = scorer.cycle_state(state, request, [p.ep for p in pods]).hashes
    n = len(hashes)

    def store(group: int, kind: str, which: list[int]) -> BlockStored:
        return BlockStored(block_hashes=which, parent_block_hash=None, token_ids=[], block_size=16, lora_id=None,
                           medium="GPU", lora_name=None, group_idx=group, kv_cache_spec_kind=kind,
                           kv_cache_spec_sliding_window=32 if kind == "sliding_window" else None)

    stream = scorer.runtime.manager.local_stream(pods[0].ep.key)
    asyncio.run(stream.handle(0, payload([store(0, "full_attention", hashes), store(1, "sliding_window", hashes)])))
    # The sliding-window group dropped everything but the last window: still a full hit.
    asyncio.run(stream.handle(1, payload([BlockRemoved(block_hashes=hashes[:-2], medium="GPU", group_idx=1)])))
    assert scorer.score(CycleState(), request, [p.ep for p in pods]) == [1.0, 0.0]
    # Without the window's last block the pod cannot reuse the prefix at all.
    asyncio.run(stream.handle(2, payload([BlockRemoved(block_hashes=hashes[-1:], medium="GPU", group_idx=1)])))
    scores = scorer.score(CycleState(), request, [p.ep for p in pods])
    assert scores[0] == 0.0 and n >= 4
