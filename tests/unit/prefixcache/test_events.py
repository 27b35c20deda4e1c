"""KV-event encoding/decoding against msgspec structs declared exactly as vLLM declares them
(tests/unit/prefixcache/vllm_reference.py): msgspec, not our beliefs, decides the bytes."""

from __future__ import annotations

from typing import Any

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

from . import vllm_reference as ref

# (kwargs shared by both sides) for a spread of events: defaults left unset, all set, bytes hashes.
STORED_CASES: list[dict[str, Any]] = [
    dict(block_hashes=[1, 2**64 - 1], parent_block_hash=None, token_ids=[0, 1, 300], block_size=16,
         lora_id=None, medium="GPU", lora_name=None),
    dict(block_hashes=[5], parent_block_hash=4, token_ids=list(range(16)), block_size=16, lora_id=None,
         medium="GPU", lora_name="adapter", extra_keys=[("adapter", "salt")], group_idx=0,
         kv_cache_spec_kind="full_attention"),
    dict(block_hashes=[b"\xaa" * 32, b"\xbb" * 32], parent_block_hash=b"\xcc" * 32, token_ids=list(range(8)),
         block_size=4, lora_id=3, medium="CPU", lora_name=None, extra_keys=[None, None], group_idx=1,
         kv_cache_spec_kind="sliding_window", kv_cache_spec_sliding_window=128),
]
REMOVED_CASES: list[dict[str, Any]] = [
    dict(block_hashes=[7], medium="GPU"),
    dict(block_hashes=[b"\x01" * 32], medium=None, group_idx=2),
]


def _pair(shape: str, rank: int | None) -> tuple[bytes, KVEventBatch]:
    """The same batch as vLLM's msgspec bytes and as our struct."""
    vllm = ref.vllm_event_structs(**ref.SHAPES[shape])
    theirs = [vllm.BlockStored(**c) for c in STORED_CASES] + [vllm.BlockRemoved(**c) for c in REMOVED_CASES]
    theirs.append(vllm.AllBlocksCleared())
    ours = [BlockStored(**_lists(c)) for c in STORED_CASES] + [BlockRemoved(**c) for c in REMOVED_CASES]
    ours.append(AllBlocksCleared())
    wire = msgspec.msgpack.encode(vllm.KVEventBatch(ts=1.5, events=theirs, data_parallel_rank=rank))
    return wire, KVEventBatch(ts=1.5, events=ours, data_parallel_rank=rank)


def _lists(case: dict[str, Any]) -> dict[str, Any]:
    # msgpack has no tuples: decoded extra keys come back as lists.
    out = dict(case)
    if out.get("extra_keys") is not None:
        out["extra_keys"] = [list(k) if k is not None else None for k in out["extra_keys"]]
    return out


@pytest.mark.parametrize("shape", list(ref.SHAPES))
@pytest.mark.parametrize("rank", [None, 0, 3])
def test_decodes_vllm_bytes_in_every_shape(shape: str, rank: int | None) -> None:
    wire, expected = _pair(shape, rank)
    assert decode_event_batch(wire) == expected


@pytest.mark.parametrize("shape", list(ref.SHAPES))
@pytest.mark.parametrize("rank", [None, 0, 3])
def test_encodes_the_same_bytes_as_vllm(shape: str, rank: int | None) -> None:
    wire, batch = _pair(shape, rank)
    assert encode_event_batch(batch, shape) == wire


def test_default_omission_is_msgspecs() -> None:
    """What the reference writes for defaults: every field in arrays; in maps, fields without
    a default (lora_id, medium, lora_name) always, defaulted ones only when set."""
    _, batch = _pair("map", 0)
    array = msgspec.msgpack.decode(encode_event_batch(batch, "array"))
    assert len(array[1][0]) == 12 and array[1][0][8:] == [None, None, None, None]
    assert len(array[1][3]) == 4 and array[1][3][3] is None
    maps = msgspec.msgpack.decode(encode_event_batch(batch, "map"))
    assert set(maps[1][0]) == {"type", "block_hashes", "parent_block_hash", "token_ids", "block_size",
                               "lora_id", "medium", "lora_name"}
    assert set(maps[1][3]) == {"type", "block_hashes", "medium"}
    assert maps[1][5] == {"type": "AllBlocksCleared"}
    no_rank = msgspec.msgpack.decode(encode_event_batch(KVEventBatch(ts=0.0, events=[]), "map-batch"))
    assert no_rank == {"ts": 0.0, "events": []}


def test_decodes_the_first_released_layout() -> None:
    old = ref.vllm_0_9_structs()
    wire = msgspec.msgpack.encode(old.KVEventBatch(ts=2.0, events=[
        old.BlockStored(block_hashes=[5], parent_block_hash=7, token_ids=[1, 2], block_size=16, lora_id=None),
        old.BlockRemoved(block_hashes=[5]),
    ]))
    batch = decode_event_batch(wire)
    assert batch.data_parallel_rank is None
    assert batch.events == [BlockStored([5], 7, [1, 2], 16), BlockRemoved([5])]


def test_decodes_newer_extra_fields_in_both_shapes() -> None:
    arrays = msgspec.msgpack.encode([2.0, [
        ["BlockStored", [5], 7, [1], 16, None, "GPU", "l", [None], 0, "full", None, "future-field"],
        ["BlockRemoved", [5], "GPU", 0, "future-field"],
        ["AllBlocksCleared", "future-field"],
    ], 1, "future-batch-field"])
    maps = msgspec.msgpack.encode({"ts": 2.0, "snapshot_version": 4, "data_parallel_rank": 1, "events": [
        {"type": "BlockStored", "block_hashes": [5], "parent_block_hash": 7, "token_ids": [1], "block_size": 16,
         "lora_id": None, "medium": "GPU", "lora_name": "l", "extra_keys": [None], "group_idx": 0,
         "kv_cache_spec_kind": "full", "component_id": 3},
        {"type": "BlockRemoved", "block_hashes": [5], "medium": "GPU", "group_idx": 0, "component_id": 3},
        {"type": "AllBlocksCleared"},
    ]})
    for wire in (arrays, maps):
        batch = decode_event_batch(wire)
        assert batch.data_parallel_rank == 1
        stored = batch.events[0]
        assert isinstance(stored, BlockStored)
        assert (stored.lora_name, stored.group_idx, stored.kv_cache_spec_kind) == ("l", 0, "full")
        assert batch.events[1] == BlockRemoved([5], "GPU", 0)
        assert isinstance(batch.events[2], AllBlocksCleared)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x93garbage",
        msgspec.msgpack.encode([1.0, [["NoSuchEvent", 1]]]),
        msgspec.msgpack.encode({"ts": 1}),
        msgspec.msgpack.encode({"ts": "x", "events": []}),
        msgspec.msgpack.encode({"ts": 1.0, "events": [{"type": "BlockStored"}]}),
        msgspec.msgpack.encode({"ts": 1.0, "events": [], "data_parallel_rank": "0"}),
        msgspec.msgpack.encode([1.0, [{"type": "Nope"}]]),
        msgspec.msgpack.encode([True, []]),
        msgspec.msgpack.encode([1.0, "x"]),
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
