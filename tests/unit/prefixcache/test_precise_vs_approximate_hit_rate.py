"""Precise (event-driven) vs approximate prefix routing on a shared-prefix workload.

Deterministic, in-process: three simulated pods with small real block pools (evictions
happen) and two EPP replicas taking turns, as in an HA deployment. Each replica only sees its
own routing decisions, so the approximate scorers disagree about where a prefix lives and
cannot see evictions; the precise scorers both follow the pods' KV events. The hit rate is
measured against the pools' real state (blocks actually found cached at prefill).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.prefixcache.block_hash import BlockHasher
from epp.prefixcache.subscriber import KVEventStream
from epp.scheduling.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer
from epp.scheduling.registry import PluginContext, parse_params
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, SchedulingResult
from epp.sim.kv_cache import PrefixCachingBlockPool
from epp.tokenization.tokenizer import get_tokenizer

from .kv_fixtures import payload, serve

PODS = 3
POOL_BLOCKS = 48
GROUPS = 6
REQUESTS = 360
WORDS = [f"w{i}" for i in range(500)]


def workload(seed: int) -> list[str]:
    rng = random.Random(seed)
    systems = [" ".join(rng.choice(WORDS) for _ in range(160)) for _ in range(GROUPS)]
    weights = [1.0 / (g + 1) for g in range(GROUPS)]  # a few hot prefixes, a long tail
    return [
        f"{rng.choices(systems, weights)[0]} question {i} " + " ".join(rng.choice(WORDS) for _ in range(30))
        for i in range(REQUESTS)
    ]


def run(kind: str, prompts: Sequence[str]) -> float:
    tokenizer = get_tokenizer("simple")
    hasher = BlockHasher(block_size=16)
    pools = [PrefixCachingBlockPool(num_blocks=POOL_BLOCKS, block_size=16) for _ in range(PODS)]
    replicas: list[tuple[Any, list[Endpoint], dict[str, int]]] = []
    for _ in range(2):
        ds = Datastore()
        eps = [ds.upsert_endpoint(Endpoint(name=f"pod-{i}", address="127.0.0.1", port=8000 + i))
               for i in range(PODS)]
        for ep in eps:  # what the metrics scraper reports (autoTune uses it)
            ep.metrics.num_gpu_blocks = POOL_BLOCKS
        ctx = PluginContext(datastore=ds, services={"metrics.registry": CollectorRegistry()})
        if kind == "precise":
            params = parse_params(PrecisePrefixCacheScorer.Params, {}, "test")
            scorer: Any = PrecisePrefixCacheScorer(name="precise", params=params, ctx=ctx)
        else:
            scorer = PrefixCacheScorer(name="approx", ctx=ctx)
        replicas.append((scorer, eps, {ep.key: 0 for ep in eps}))
    streams: list[list[KVEventStream]] = [
        [r[0].runtime.manager.local_stream(ep.key) for ep in r[1]] for r in replicas
    ] if kind == "precise" else []
    seqs = [0] * PODS
    hit = total = 0
    for i, prompt in enumerate(prompts):
        scorer, eps, routed = replicas[i % 2]
        request = LLMRequest(request_id=str(i), model="m", target_model="m", prompt=prompt,
                             body={"prompt": prompt})
        state = CycleState()
        scores = scorer.score(state, request, eps)
        # max-score picker; ties go to the pod this replica sent the fewest requests to.
        best = max(range(PODS), key=lambda j: (scores[j], -routed[eps[j].key], -j))
        routed[eps[best].key] += 1
        scorer.pre_request(state, request, SchedulingResult({"d": ProfileRunResult([eps[best]])}, "d"))
        tokens = tokenizer.encode(prompt)
        hit += serve(pools[best], hasher, tokens)
        total += len(tokens) // 16
        events = pools[best].drain_events()
        if events and streams:
            body = payload(events)
            for replica_streams in streams:  # every replica subscribes to every pod
                asyncio.run(replica_streams[best].handle(seqs[best], body))
            seqs[best] += 1
    return hit / total


def test_precise_routing_beats_approximate_on_shared_prefixes() -> None:
    prompts = workload(11)
    precise = run("precise", prompts)
    approximate = run("approximate", prompts)
    print(f"hit rate: precise={precise:.3f} approximate={approximate:.3f}")
    assert precise > approximate + 0.05
