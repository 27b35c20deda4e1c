"""Byte-level vectors derived by hand from the msgpack spec and vLLM's msgspec struct layout
(EventBatch array_like; events tagged array_like with the class name as first element)."""

import msgspec
import pytest

from epp.prefixcache.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    KVEventDecodeError,
    decode_event_batch,
    decode_seq,
    encode_event_batch,
    encode_seq,
)

TAG_STORED = bytes([0xAB]) + b"BlockStored"  # fixstr(11)
TAG_REMOVED = bytes([0xAC]) + b"BlockRemoved"  # fixstr(12)
TAG_CLEARED = bytes([0xB0]) + b"AllBlocksCleared"  # fixstr(16)
TS_1_5 = bytes.fromhex("cb3ff8000000000000")  # float64 1.5


def test_all_blocks_cleared_golden() -> None:
    payload = encode_event_batch(KVEventBatch(ts=1.5, events=[AllBlocksCleared()]))
    assert payload == b"\x92" + TS_1_5 + b"\x91" + b"\x91" + TAG_CLEARED


def test_block_stored_golden_current_layout() -> None:
    batch = KVEventBatch(
        ts=1.5,
        events=[
            BlockStored(
                block_hashes=[1, 2**64 - 1],
                parent_block_hash=None,
                token_ids=[0, 1, 300],
                block_size=16,
                lora_id=None,
                medium="GPU",
                lora_name=None,
            )
        ],
        data_parallel_rank=0,
    )
    expected = (
        b"\x93"
        + TS_1_5
        + b"\x91"
        + b"\x98"
        + TAG_STORED  # array(8): tag + 7 always-written fields
        + b"\x92\x01\xcf"
        + b"\xff" * 8  # block_hashes [1, uint64 max]
        + b"\xc0"  # parent_block_hash nil
        + b"\x93\x00\x01\xcd\x01\x2c"  # token_ids [0, 1, 300]
        + b"\x10"  # block_size 16
        + b"\xc0"
        + b"\xa3GPU"
        + b"\xc0"  # lora_id, medium, lora_name
        + b"\x00"  # data_parallel_rank 0
    )
    assert encode_event_batch(batch) == expected
    assert decode_event_batch(expected) == batch


def test_block_removed_golden_with_bytes_hash() -> None:
    batch = KVEventBatch(ts=1.5, events=[BlockRemoved(block_hashes=[b"\xaa\xbb"], medium="GPU")])
    expected = b"\x92" + TS_1_5 + b"\x91" + b"\x93" + TAG_REMOVED + b"\x91\xc4\x02\xaa\xbb" + b"\xa3GPU"
    assert encode_event_batch(batch) == expected
    assert decode_event_batch(expected).events[0] == BlockRemoved([b"\xaa\xbb"], "GPU")


def test_optional_trailing_fields_written_only_when_set() -> None:
    event = BlockStored([5], 4, [1], 16, None, "GPU", "adapter", group_idx=0)
    wire = msgspec.msgpack.decode(encode_event_batch(KVEventBatch(ts=0.0, events=[event])))
    assert wire[1][0] == ["BlockStored", [5], 4, [1], 16, None, "GPU", "adapter", None, 0]


def test_decodes_older_short_forms() -> None:
    # vLLM 0.9: BlockStored ends at lora_id, BlockRemoved has no medium, no dp rank.
    old = msgspec.msgpack.encode([2.0, [["BlockStored", [5], 7, [1, 2], 16, None], ["BlockRemoved", [5]]]])
    batch = decode_event_batch(old)
    assert batch.data_parallel_rank is None
    assert batch.events == [BlockStored([5], 7, [1, 2], 16), BlockRemoved([5])]


def test_decodes_newer_extra_trailing_fields() -> None:
    new = msgspec.msgpack.encode(
        [
            2.0,
            [
                ["BlockStored", [5], 7, [1], 16, None, "GPU", "l", [None], 0, "full", None, "future-field"],
                ["BlockRemoved", [5], "GPU", 0, "future-field"],
                ["AllBlocksCleared", "future-field"],
            ],
            1,
            "future-batch-field",
        ]
    )
    batch = decode_event_batch(new)
    assert batch.data_parallel_rank == 1
    stored = batch.events[0]
    assert isinstance(stored, BlockStored)
    assert (stored.lora_name, stored.group_idx, stored.kv_cache_spec_kind) == ("l", 0, "full")
    assert isinstance(batch.events[2], AllBlocksCleared)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x93garbage",
        msgspec.msgpack.encode([1.0, [["NoSuchEvent", 1]]]),
        msgspec.msgpack.encode({"ts": 1}),
    ],
)
def test_garbage_raises_one_error_type(payload: bytes) -> None:
    with pytest.raises(KVEventDecodeError):
        decode_event_batch(payload)


def test_seq_frames() -> None:
    assert encode_seq(1) == b"\x00" * 7 + b"\x01"
    assert decode_seq(encode_seq(2**40)) == 2**40
    assert decode_seq(encode_seq(-1)) == -1
    with pytest.raises(KVEventDecodeError):
        decode_seq(b"\x00")


def test_map_format_round_trips_and_is_tagged_by_type() -> None:
    import msgspec

    from epp.prefixcache.events import (
        AllBlocksCleared,
        BlockRemoved,
        BlockStored,
        KVEventBatch,
        decode_event_batch,
        encode_event_batch,
    )

    batch = KVEventBatch(ts=1.5, events=[
        BlockStored(block_hashes=[1, 2], parent_block_hash=None, token_ids=list(range(32)), block_size=16,
                    lora_id=None, medium="GPU"),
        BlockRemoved(block_hashes=[1], medium="GPU"),
        AllBlocksCleared(),
    ], data_parallel_rank=0)
    payload = encode_event_batch(batch, "map")
    raw = msgspec.msgpack.decode(payload)
    assert raw[0] == 1.5 and raw[2] == 0
    assert [e["type"] for e in raw[1]] == ["BlockStored", "BlockRemoved", "AllBlocksCleared"]
    assert raw[1][0]["block_hashes"] == [1, 2] and raw[1][0]["block_size"] == 16
    assert decode_event_batch(payload) == decode_event_batch(encode_event_batch(batch, "array"))
