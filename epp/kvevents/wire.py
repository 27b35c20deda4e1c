"""Payload decoding that accepts both wire shapes vLLM has used for KV events.

vLLM encoded each event as a tagged positional array (`["BlockStored", hashes, ...]`) until
vllm-project/vllm#42892 (merged 2026-06) switched the inner events to tagged *maps*
(`{"type": "BlockStored", "block_hashes": [...], ...}`) while the outer EventBatch stayed an
array. epp.kvcache.events decodes the array form; this module falls back to the map form so
one EPP follows old and new vLLM pods alike. Unknown map keys are ignored (forward
compatible); a missing required field or a wrong type rejects the whole payload.
"""

from __future__ import annotations

from typing import Any

import msgspec

from epp.kvcache.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEvent,
    KVEventBatch,
    KVEventDecodeError,
    decode_event_batch,
)

_generic = msgspec.msgpack.Decoder()



def decode_payload(payload: bytes) -> KVEventBatch:
    """Decode one KV-event payload (array- or map-shaped events); raises KVEventDecodeError."""
    try:
        return decode_event_batch(payload)
    except KVEventDecodeError as first:
        try:
            return _decode_map_events(payload)
        except KVEventDecodeError:
            raise first from None


def _decode_map_events(payload: bytes) -> KVEventBatch:
    try:
        raw = _generic.decode(payload)
    except msgspec.DecodeError as e:
        raise KVEventDecodeError(f"not msgpack: {e}") from e
    if not isinstance(raw, list) or len(raw) < 2 or not isinstance(raw[1], list):
        raise KVEventDecodeError("event batch must be an array [ts, [events...], dp_rank?]")
    ts, events = raw[0], raw[1]
    rank = raw[2] if len(raw) > 2 else None
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise KVEventDecodeError("event batch timestamp must be a number")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
        raise KVEventDecodeError("data_parallel_rank must be an integer")
    out: list[KVEvent] = [_map_event(e) for e in events]
    return KVEventBatch(ts=float(ts), events=out, data_parallel_rank=rank)


def _map_event(event: Any) -> KVEvent:
    if not isinstance(event, dict):
        raise KVEventDecodeError(f"event must be a map or a tagged array, got {type(event).__name__}")
    tag = event.get("type")
    try:
        if tag == "BlockStored":
            return msgspec.convert([tag, *_positional(event, BlockStored.__struct_fields__)], BlockStored)
        if tag == "BlockRemoved":
            return msgspec.convert([tag, *_positional(event, BlockRemoved.__struct_fields__)], BlockRemoved)
        if tag == "AllBlocksCleared":
            return AllBlocksCleared()
    except msgspec.ValidationError as e:
        raise KVEventDecodeError(f"invalid {tag} event: {e}") from e
    raise KVEventDecodeError(f"unknown event type {tag!r}")


def _positional(event: dict[Any, Any], fields: tuple[str, ...]) -> list[Any]:
    """The map's values in struct-field order (the structs are tagged array_like structs,
    so the caller puts the tag first); trailing absent fields are left out."""
    values = [event.get(f) for f in fields]
    while values and values[-1] is None:
        values.pop()
    return values
