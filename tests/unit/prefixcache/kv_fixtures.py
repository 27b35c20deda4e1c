"""Shared helpers: drive the simulator's real block pool to produce vLLM-shaped KV events."""

from __future__ import annotations

import random
from collections.abc import Sequence

from epp.prefixcache.block_hash import BlockHasher
from epp.prefixcache.events import KVEvent, KVEventBatch, encode_event_batch
from epp.sim.kv_cache import PrefixCachingBlockPool


def serve(pool: PrefixCachingBlockPool, hasher: BlockHasher, tokens: Sequence[int]) -> int:
    """Run one request's prefill through the pool like vLLM's scheduler: reuse the cached
    prefix, allocate the rest, cache the new full blocks, then free. Returns hit blocks."""
    size = pool.block_size
    hashes = hasher.hash_tokens(tokens)
    hits = pool.lookup_prefix(hashes)
    pool.touch(hits)
    needed = -(-len(tokens) // size) - len(hits)
    new = pool.allocate(needed)
    if new is None:
        pool.free(hits)
        return 0
    full_new = new[: len(hashes) - len(hits)]
    parent = hashes[len(hits) - 1] if hits else None
    pool.cache_full_blocks(full_new, hashes[len(hits):], list(tokens[len(hits) * size: len(hashes) * size]),
                           parent, None)
    pool.free([*hits, *new])
    return len(hits)


def payload(events: list[KVEvent]) -> bytes:
    return encode_event_batch(KVEventBatch(ts=0.0, events=events, data_parallel_rank=0))


def random_tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1, 50_000) for _ in range(n)]
