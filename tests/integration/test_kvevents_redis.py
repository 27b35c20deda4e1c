"""The Redis-backed KV-block index against a real redis-server on loopback."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.prefixcache import stop_services
from epp.prefixcache.block_hash import BlockHasher, wire_hash
from epp.prefixcache.index import RedisKVBlockIndex
from epp.prefixcache.subscriber import KVEventStream
from epp.scheduling.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from epp.scheduling.registry import PluginContext, parse_params
from epp.scheduling.types import CycleState, LLMRequest
from epp.sim.kv_cache import PrefixCachingBlockPool
from tests.helpers.procs import free_port, running, wait_port
from tests.unit.prefixcache.kv_fixtures import payload, serve

pytestmark = pytest.mark.integration


def _redis_server() -> str:
    """The redis-server binary; a missing one fails the tests (CI installs it), never skips them."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not installed: apt-get install redis-server (.ci/run installs it)",
                    pytrace=False)
    return binary


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("redis")
    args = [_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]
    with running(args, workdir / "redis.log"):
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture
async def index(redis_url: str) -> AsyncIterator[RedisKVBlockIndex]:
    idx = RedisKVBlockIndex(redis_url, key_prefix=f"t-{uuid.uuid4().hex[:8]}:")
    yield idx
    await idx.close()


async def test_redis_index_semantics_match_the_in_memory_one(index: RedisKVBlockIndex) -> None:
    await index.add("a", [1, 2, 3, 4])
    await index.add("b", [1, 2])
    await index.add("b", [b"\x07" * 32])
    assert index.longest_prefix([1, 2, 3, 4, 5]) == {"a": 4, "b": 2}
    assert index.longest_prefix([1, 2, 3], pods=["b"]) == {"b": 2}
    assert index.longest_prefix([b"\x07" * 32]) == {"b": 1}
    await index.add("a", [1], medium="CPU")
    await index.remove("a", [1], medium="GPU")
    assert index.longest_prefix([1, 2]) == {"a": 2, "b": 2}  # still on CPU
    await index.remove("a", [1])
    assert index.longest_prefix([1, 2]) == {"b": 2}
    assert index.pods_with_blocks() == {"a", "b"}
    await index.clear_pod("b")
    assert index.longest_prefix([1, 2]) == {}
    assert index.pods_with_blocks() == {"a"}


async def test_two_epp_replicas_share_one_view(redis_url: str, index: RedisKVBlockIndex) -> None:
    replica_b = RedisKVBlockIndex(redis_url, key_prefix=index.key_prefix)
    try:
        stream = KVEventStream("pod", index)
        hasher = BlockHasher(block_size=16)
        pool = PrefixCachingBlockPool(num_blocks=32, block_size=16)
        tokens = list(range(1, 81))
        serve(pool, hasher, tokens)
        await stream.handle(0, payload(pool.drain_events()))
        wire = [wire_hash(h) for h in hasher.hash_tokens(tokens)]
        assert replica_b.longest_prefix(wire) == {"pod": 5}
    finally:
        await replica_b.close()


async def test_precise_scorer_with_redis_backend(redis_url: str) -> None:
    ds = Datastore()
    eps = [ds.upsert_endpoint(Endpoint(name=f"p{i}", address="127.0.0.1", port=9000 + i)) for i in range(2)]
    ctx = PluginContext(datastore=ds, services={"metrics.registry": CollectorRegistry()})
    params = parse_params(PrecisePrefixCacheScorer.Params, {
        "indexerConfig": {"kvBlockIndexConfig": {"redisConfig": {"address": redis_url,
                                                                  "keyPrefix": f"s-{uuid.uuid4().hex[:8]}:"}}},
    }, "test")
    scorer = PrecisePrefixCacheScorer(name="precise", params=params, ctx=ctx)
    try:
        prompt = " ".join(f"word{i}" for i in range(200))
        pool = PrefixCachingBlockPool(num_blocks=128, block_size=16)
        serve(pool, scorer.hasher, scorer.tokenizer.encode(prompt))
        await scorer.runtime.manager.local_stream(eps[1].key).handle(0, payload(pool.drain_events()))
        await scorer.runtime.manager.local_stream(eps[0].key).handle(0, payload([]))
        request = LLMRequest(request_id="r", model="m", target_model="m", prompt=prompt, body={"prompt": prompt})
        assert scorer.score(CycleState(), request, eps) == [0.0, 1.0]
    finally:
        await stop_services(ctx.services)


async def test_hybrid_groups_and_bytes_hashes_in_redis(index: RedisKVBlockIndex) -> None:
    """The stream's per-group tiers and folded bytes hashes work on the shared index too."""
    from epp.prefixcache.events import BlockRemoved, BlockStored
    from epp.prefixcache.hybrid import hybrid_hit

    stream = KVEventStream("hybrid", index, hybrid_keys=set())
    digests = [bytes([i]) * 32 for i in range(1, 4)]
    folded = [int.from_bytes(d[-8:], "big") for d in digests]
    stored = [BlockStored(block_hashes=list(digests), parent_block_hash=None, token_ids=[], block_size=16,
                          lora_id=None, medium="GPU", lora_name=None, group_idx=g, kv_cache_spec_kind=kind)
              for g, kind in ((0, "full_attention"), (1, "mamba"))]
    await stream.handle(0, payload(list(stored)))
    await stream.handle(1, payload([BlockRemoved(block_hashes=digests[:2], medium="GPU", group_idx=1)]))
    assert index.longest_prefix(folded, ["hybrid"]) == {"hybrid": 3}
    assert index.held("hybrid/g1", folded) == [False, False, True]
    assert hybrid_hit(index, "hybrid", stream.groups, folded) == 3
    await stream.handle(2, payload([BlockRemoved(block_hashes=digests[1:2], medium="GPU", group_idx=0)]))
    assert index.longest_prefix(folded, ["hybrid"]) == {"hybrid": 1}
    assert hybrid_hit(index, "hybrid", stream.groups, folded) == 0  # mamba state only at block 3
