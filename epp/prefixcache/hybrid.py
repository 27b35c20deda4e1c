"""vLLM's prefix-cache hit rule for hybrid models (several KV-cache groups).

A hybrid model (e.g. full attention + sliding window, or attention + Mamba) keeps one
KV-cache group per attention type; vLLM publishes each group's stores and removals with
`group_idx`, and the subscriber indexes each group under its own key (`group_key`). vLLM's
HybridKVCacheCoordinator.find_longest_cache_hit takes the longest length every group accepts,
as a fixed point: full attention needs every block of the prefix (a leading run, the upper
bound); a sliding-window group needs only the blocks of its window before the hit point
(SlidingWindowManager scans from the right for `cdiv(window - 1, block_size)` contiguous
cached blocks); a Mamba group needs the block at the hit point (its state there). Each may
only shorten the hit, so the loop ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from epp.prefixcache.index import BlockKey, KVBlockIndex
from epp.prefixcache.subscriber import GroupSpec, group_key

# vLLM KVCacheSpecKind values of attention that needs every block of the prefix.
FULL_ATTENTION_KINDS = frozenset({"full_attention", "mla_attention", "sink_full_attention",
                                  "encoder_only_attention"})


def is_full_attention(spec: GroupSpec) -> bool:
    return spec.kind is None or spec.kind in FULL_ATTENTION_KINDS


def blocks_needed(spec: GroupSpec) -> int:
    """Contiguous cached blocks a non-full-attention group needs right before the hit point."""
    if spec.kind is not None and spec.kind.startswith("sliding_window") and spec.sliding_window:
        return max(1, -(-(spec.sliding_window - 1) // max(1, spec.block_size)))
    return 1  # Mamba and other state-at-a-point groups: the block at the hit point


def suffix_hit(held: Sequence[bool], max_blocks: int, needed: int) -> int:
    """Longest hit <= max_blocks whose last `needed` blocks are held (or, for a hit shorter
    than that, all of its blocks): SlidingWindowManager's right-to-left scan."""
    run = 0
    for i in range(max_blocks - 1, -1, -1):
        if held[i]:
            run += 1
            if run >= needed:
                return i + needed
        else:
            run = 0
    return run  # the blocks 0..run-1 are held: a hit shorter than the window


def hybrid_hit(index: KVBlockIndex, key: str, groups: Mapping[int, GroupSpec], hashes: Sequence[BlockKey]) -> int:
    """Blocks of `hashes` the pod (index key `key`) can reuse under vLLM's hybrid rule."""
    full = [g for g, spec in groups.items() if is_full_attention(spec)] or [0]
    if 0 not in groups:
        full = sorted({0, *full})  # group 0 events without a kind (older vLLM) are attention
    hit = len(hashes)
    for g in full:
        k = group_key(key, g)
        hit = min(hit, index.longest_prefix(hashes, [k]).get(k, 0))
        if hit == 0:
            return 0
    others = [(g, spec) for g, spec in groups.items() if g not in full]
    if not others:
        return hit
    held = {g: index.held(group_key(key, g), hashes[:hit]) for g, _ in others}
    while True:
        before = hit
        for g, spec in others:
            hit = suffix_hit(held[g], hit, blocks_needed(spec))
            if hit == 0:
                return 0
        if hit == before:
            return hit
