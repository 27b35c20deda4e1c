"""vLLM's hybrid-model hit rule (epp.prefixcache.hybrid) over per-group index keys."""

from __future__ import annotations

import random

from epp.prefixcache.events import BlockRemoved, BlockStored
from epp.prefixcache.hybrid import hybrid_hit, suffix_hit
from epp.prefixcache.index import InMemoryKVBlockIndex
from epp.prefixcache.subscriber import GroupSpec, KVEventStream

from .kv_fixtures import payload


def sliding_window_scan(cached: list[bool], max_blocks: int, contiguous: int) -> int:
    """SlidingWindowManager.find_longest_cache_hit without alignment/eagle, written out as
    vLLM does: keep the computed list, trim it where the window is satisfied."""
    computed: list[bool | None] = [None] * max_blocks
    run = 0
    for i in range(max_blocks - 1, -1, -1):
        if cached[i]:
            computed[i] = True
            run += 1
            if run >= contiguous:
                del computed[i + run:]
                return len(computed)
        else:
            run = 0
    del computed[run:]
    return len(computed)


def test_suffix_hit_equals_vllms_sliding_window_scan() -> None:
    rng = random.Random(4)
    for _ in range(2000):
        n = rng.randrange(0, 12)
        cached = [rng.random() < 0.6 for _ in range(n)]
        max_blocks = rng.randrange(0, n + 1)
        needed = rng.randrange(1, 5)
        assert suffix_hit(cached, max_blocks, needed) == sliding_window_scan(cached, max_blocks, needed)


def stored(hashes: list[int], group: int, kind: str, window: int | None = None) -> BlockStored:
    return BlockStored(block_hashes=hashes, parent_block_hash=None, token_ids=[], block_size=16, lora_id=None,
                       medium="GPU", lora_name=None, group_idx=group, kv_cache_spec_kind=kind,
                       kv_cache_spec_sliding_window=window)


async def test_full_attention_plus_sliding_window() -> None:
    index = InMemoryKVBlockIndex()
    stream = KVEventStream("pod", index, hybrid_keys=set())
    prefix = [11, 12, 13, 14, 15, 16]
    # Window of 32 tokens with blocks of 16: the 2 blocks before the hit point must be cached.
    await stream.handle(0, payload([stored(prefix, 0, "full_attention"), stored(prefix, 1, "sliding_window", 32)]))
    assert stream.groups[1] == GroupSpec("sliding_window", 32, 16)
    # The window moved on: the sliding-window group evicted the old blocks, which used to
    # erase the pod's entry; the hit is still the whole prefix.
    await stream.handle(1, payload([BlockRemoved(block_hashes=prefix[:4], medium="GPU", group_idx=1)]))
    assert hybrid_hit(index, "pod", stream.groups, prefix) == 6
    assert hybrid_hit(index, "pod", stream.groups, prefix[:5]) == 0  # its window (3, 4) is gone
    # Losing block 16 of the window: no 2 contiguous blocks remain before any hit point.
    await stream.handle(2, payload([BlockRemoved(block_hashes=[16], medium="GPU", group_idx=1)]))
    assert hybrid_hit(index, "pod", stream.groups, prefix) == 0
    # Full attention bounds the hit: a longer request matches only the cached prefix.
    await stream.handle(3, payload([stored([16], 1, "sliding_window", 32)]))
    assert hybrid_hit(index, "pod", stream.groups, [*prefix, 17, 18]) == 6


async def test_full_attention_plus_mamba() -> None:
    index = InMemoryKVBlockIndex()
    stream = KVEventStream("pod", index, hybrid_keys=set())
    prefix = [21, 22, 23, 24, 25, 26]
    await stream.handle(0, payload([stored(prefix, 0, "full_attention"), stored([23], 1, "mamba")]))
    # Mamba keeps its state at block 23 only: the hit ends there (3 blocks).
    assert hybrid_hit(index, "pod", stream.groups, prefix) == 3
    await stream.handle(1, payload([stored([26], 1, "mamba")]))
    assert hybrid_hit(index, "pod", stream.groups, prefix) == 6
    await stream.handle(2, payload([BlockRemoved(block_hashes=[25], medium="GPU", group_idx=0)]))
    assert hybrid_hit(index, "pod", stream.groups, prefix) == 3  # full attention now stops at 4 blocks
