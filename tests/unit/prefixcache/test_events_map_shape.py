from __future__ import annotations

import msgspec
import pytest

from epp.prefixcache.events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventDecodeError, decode_event_batch

from .kv_fixtures import payload


def test_array_shaped_events_decode() -> None:
    batch = decode_event_batch(payload([BlockRemoved(block_hashes=[1], medium="GPU"), AllBlocksCleared()]))
    assert batch.events == [BlockRemoved(block_hashes=[1], medium="GPU"), AllBlocksCleared()]


def test_map_shaped_events_of_newer_vllm_decode() -> None:
    # vLLM >= #42892: inner events are maps tagged by "type"; unknown keys are ignored.
    raw = msgspec.msgpack.encode([
        1.5,
        [
            {"type": "BlockStored", "block_hashes": [1, 2], "parent_block_hash": None,
             "token_ids": list(range(32)), "block_size": 16, "lora_id": None, "medium": "GPU",
             "lora_name": None, "extra_keys": [None, None], "group_idx": 0,
             "kv_cache_spec_kind": "full_attention", "some_future_field": {"x": 1}},
            {"type": "BlockRemoved", "block_hashes": [b"\x01" * 32], "medium": "CPU"},
            {"type": "AllBlocksCleared"},
        ],
        0,
    ])
    batch = decode_event_batch(raw)
    stored, removed, cleared = batch.events
    assert isinstance(stored, BlockStored) and stored.block_hashes == [1, 2]
    assert stored.kv_cache_spec_kind == "full_attention"
    assert removed == BlockRemoved(block_hashes=[b"\x01" * 32], medium="CPU")
    assert cleared == AllBlocksCleared()
    assert batch.data_parallel_rank == 0


@pytest.mark.parametrize("bad", [
    [1.0, [{"type": "BlockStored"}]],
    [1.0, [{"type": "Nope"}]],
    [1.0, [{"block_hashes": [1]}]],
    [True, []],
    [1.0, "x"],
])
def test_bad_map_events_are_rejected(bad: object) -> None:
    with pytest.raises(KVEventDecodeError):
        decode_event_batch(msgspec.msgpack.encode(bad))
