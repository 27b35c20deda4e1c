from epp.prefixcache.block_hash import BlockHasher, wire_hash
from epp.prefixcache.events import AllBlocksCleared, BlockRemoved, BlockStored
from epp.sim.kv_cache import PrefixCachingBlockPool


def _hashes(n_blocks: int, start: int = 0) -> list[bytes]:
    return BlockHasher("sha256_cbor", block_size=4).hash_tokens(list(range(start, start + 4 * n_blocks)))


def test_store_lookup_and_events() -> None:
    pool = PrefixCachingBlockPool(num_blocks=8, block_size=4)
    blocks = pool.allocate(3)
    assert blocks is not None and pool.usage() == 3 / 8
    hashes = _hashes(3)
    pool.cache_full_blocks(blocks, hashes, list(range(12)), None, None)
    (event,) = pool.drain_events()
    assert event == BlockStored([wire_hash(h) for h in hashes], None, list(range(12)), 4, None, "GPU", None,
                                extra_keys=[None, None, None], group_idx=0, kv_cache_spec_kind="full_attention")
    assert pool.lookup_prefix(hashes) == blocks
    assert pool.lookup_prefix([hashes[0], b"miss", hashes[2]]) == blocks[:1]


def test_freed_cached_blocks_are_reused_then_evicted_lru() -> None:
    pool = PrefixCachingBlockPool(num_blocks=4, block_size=4)
    first = pool.allocate(2)
    assert first is not None
    hashes = _hashes(2)
    pool.cache_full_blocks(first, hashes, list(range(8)), None, None)
    pool.free(first)
    pool.drain_events()
    assert pool.usage() == 0.0  # cached-but-free blocks count as free, as in vLLM
    # a hit takes the blocks back out of the free queue
    pool.touch(pool.lookup_prefix(hashes))
    assert pool.num_free_blocks == 2
    pool.free(first)
    # allocating everything evicts the cached blocks: tail of the chain first
    assert pool.allocate(4) is not None
    (removed,) = pool.drain_events()
    assert isinstance(removed, BlockRemoved)
    assert removed.block_hashes == [wire_hash(hashes[1]), wire_hash(hashes[0])]
    assert removed.group_idx == 0
    assert pool.lookup_prefix(hashes) == []
    assert pool.allocate(1) is None


def test_duplicate_content_splits_stored_runs() -> None:
    pool = PrefixCachingBlockPool(num_blocks=8, block_size=4)
    hashes = _hashes(3)
    a = pool.allocate(1)
    assert a is not None
    pool.cache_full_blocks(a, hashes[1:2], list(range(4, 8)), hashes[0], None)
    b = pool.allocate(3)
    assert b is not None
    pool.drain_events()
    pool.cache_full_blocks(b, hashes, list(range(12)), None, "lora-x")
    first, second = pool.drain_events()
    assert isinstance(first, BlockStored) and isinstance(second, BlockStored)
    assert (first.block_hashes, first.token_ids) == ([wire_hash(hashes[0])], [0, 1, 2, 3])
    assert (second.parent_block_hash, second.token_ids, second.lora_name) == (
        wire_hash(hashes[1]),
        [8, 9, 10, 11],
        "lora-x",
    )


def test_reset_only_when_idle() -> None:
    pool = PrefixCachingBlockPool(num_blocks=2, block_size=4)
    blocks = pool.allocate(1)
    assert blocks is not None
    assert not pool.reset()
    pool.free(blocks)
    assert pool.reset()
    assert pool.drain_events() == [AllBlocksCleared()]


def test_bytes_hashes_when_int_conversion_disabled() -> None:
    pool = PrefixCachingBlockPool(num_blocks=2, block_size=4, int_hashes=False)
    blocks = pool.allocate(1)
    assert blocks is not None
    hashes = _hashes(1)
    pool.cache_full_blocks(blocks, hashes, [0, 1, 2, 3], None, None)
    (event,) = pool.drain_events()
    assert isinstance(event, BlockStored) and event.block_hashes == hashes


def test_stored_events_carry_vllms_per_block_extra_keys() -> None:
    pool = PrefixCachingBlockPool(num_blocks=8, block_size=4)
    blocks = pool.allocate(3)
    assert blocks is not None
    pool.cache_full_blocks(blocks[:2], _hashes(2), list(range(8)), None, "lora-a", "salt")
    pool.cache_full_blocks(blocks[2:], _hashes(1, 8), list(range(8, 12)), _hashes(2)[1], "lora-a", "salt")
    first, second = pool.drain_events()
    assert isinstance(first, BlockStored) and isinstance(second, BlockStored)
    # generate_block_hash_extra_keys: the LoRA name on every block, the salt on block 0 only.
    assert first.extra_keys == [("lora-a", "salt"), ("lora-a",)]
    assert second.extra_keys == [("lora-a",)]
    assert first.lora_name == "lora-a"
