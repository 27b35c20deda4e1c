from __future__ import annotations

from epp.prefixcache.index import InMemoryKVBlockIndex


async def test_longest_prefix_counts_leading_run_per_pod() -> None:
    index = InMemoryKVBlockIndex()
    await index.add("a", [1, 2, 3, 4])
    await index.add("b", [1, 2])
    await index.add("c", [2, 3])  # no first block: never a prefix match
    assert index.longest_prefix([1, 2, 3, 4, 5]) == {"a": 4, "b": 2}
    assert index.longest_prefix([9, 1, 2]) == {}
    assert index.longest_prefix([]) == {}


async def test_longest_prefix_restricted_to_candidates() -> None:
    index = InMemoryKVBlockIndex()
    await index.add("a", [1, 2, 3])
    await index.add("b", [1, 2])
    assert index.longest_prefix([1, 2, 3], pods=["b"]) == {"b": 2}
    assert index.longest_prefix([1, 2, 3], pods=["zzz"]) == {}
    assert index.longest_prefix([1, 2, 3], pods=[]) == {}


async def test_lookup_stops_at_first_block_no_candidate_holds() -> None:
    index = InMemoryKVBlockIndex()
    await index.add("a", [1, 2])
    await index.add("b", [3, 4])  # block 3 exists, but only for a pod that lacks block 1
    assert index.longest_prefix([1, 2, 3, 4]) == {"a": 2}


async def test_lru_bound_on_blocks_evicts_least_recent() -> None:
    index = InMemoryKVBlockIndex(max_blocks=3)
    await index.add("a", [1, 2, 3])
    index.longest_prefix([1])  # touch 1: now 2 is the oldest
    await index.add("a", [4])
    assert len(index) == 3
    assert index.stats.evictions == 1
    assert index.longest_prefix([2]) == {}
    assert index.longest_prefix([1]) == {"a": 1}
    assert index.blocks_of("a") == 3


async def test_pods_per_block_bound_drops_oldest_pod() -> None:
    index = InMemoryKVBlockIndex(max_pods_per_block=2)
    for pod in ("a", "b", "c"):
        await index.add(pod, [7])
    assert index.longest_prefix([7]) == {"b": 1, "c": 1}
    assert index.blocks_of("a") == 0


async def test_remove_respects_medium_and_clear_pod() -> None:
    index = InMemoryKVBlockIndex()
    await index.add("a", [1, 2], medium="GPU")
    await index.add("a", [1], medium="CPU")
    await index.remove("a", [1], medium="GPU")
    assert index.media_of(1, "a") == {"CPU"}
    assert index.longest_prefix([1, 2]) == {"a": 2}
    await index.remove("a", [1])  # no medium: every tier
    assert index.longest_prefix([1, 2]) == {}
    await index.add("b", [1])
    await index.clear_pod("a")
    assert index.pods_with_blocks() == {"b"}
    assert index.longest_prefix([1]) == {"b": 1}
    await index.clear_pod("nobody")  # no-op
    assert len(index) == 1
