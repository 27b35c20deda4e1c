"""vLLM KV-cache events: wire structs and msgpack encode/decode (vllm/distributed/kv_events.py).

vLLM publishes, per engine step with cache changes, a ZMQ PUB multipart message
`[topic, seq, payload]`: `seq` is an 8-byte big-endian counter per publisher and `payload`
is a msgpack `EventBatch` encoded by msgspec. vLLM declares the structs with `tag=True` (the
tag is the class name) and `omit_defaults=True`; which shape goes on the wire depends on the
release:

- array shape (vLLM before #42892): the batch and every event are `array_like=True`:
      [ts, [["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id,
             medium, lora_name, extra_keys, group_idx, kv_cache_spec_kind,
             kv_cache_spec_sliding_window], ["BlockRemoved", block_hashes, medium, group_idx],
            ["AllBlocksCleared"]], data_parallel_rank]
  msgspec writes EVERY field of an array-like struct (omit_defaults does not apply to
  arrays); older releases simply had fewer fields (ending at lora_id, medium, lora_name...).
- map shape (vLLM #42892, e.g. v0.26): the events are maps tagged by "type", the batch is
  still an array: `[ts, [{"type": "BlockStored", "block_hashes": ..., ...}], rank]`.
  omit_defaults drops fields whose value equals their default: lora_id, medium and lora_name
  have no default in vLLM and are always written; extra_keys, group_idx, kv_cache_spec_kind,
  kv_cache_spec_sliding_window (default None) only when set.
- map batch (later vLLM, where EventBatch lost array_like too):
  `{"ts": ..., "events": [...], "data_parallel_rank": ...}` (the rank omitted when None).

The decoder takes all three and ignores unknown map keys (forward compatible). Block hashes
are uint64 ints (default) or raw digest bytes (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0).
vLLM can also bind a ROUTER "replay" socket: a client sends [b"", start_seq(8B BE)] and gets
back [b"", seq, payload] frames for buffered batches, then [b"", -1 (8B signed), b""].
"""

from __future__ import annotations

from typing import Any

import msgspec

ExternalBlockHash = int | bytes

MEDIUM_GPU = "GPU"
END_OF_REPLAY_SEQ = (-1).to_bytes(8, "big", signed=True)


class KVEventDecodeError(ValueError):
    """A ZMQ payload that is not a vLLM KV event batch."""


# The decoding side of vLLM's structs. Unlike vLLM, lora_id / medium / lora_name default to
# None so that the short array forms of older releases decode; the encoder writes them anyway.
class BlockStored(msgspec.Struct, tag=True, array_like=True, omit_defaults=True, frozen=True):
    block_hashes: list[ExternalBlockHash]
    parent_block_hash: ExternalBlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class BlockRemoved(msgspec.Struct, tag=True, array_like=True, omit_defaults=True, frozen=True):
    block_hashes: list[ExternalBlockHash]
    medium: str | None = None
    group_idx: int | None = None


class AllBlocksCleared(msgspec.Struct, tag=True, array_like=True, omit_defaults=True, frozen=True):
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True):
    ts: float
    events: list[KVEvent]
    data_parallel_rank: int | None = None


# Fields without a default in vLLM (always written, also in the map shape), per event type.
_REQUIRED_FIELDS: dict[type[msgspec.Struct], int] = {BlockStored: 7, BlockRemoved: 2, AllBlocksCleared: 0}

_decoder = msgspec.msgpack.Decoder(KVEventBatch)
_encoder = msgspec.msgpack.Encoder()

EVENT_FORMATS = ("array", "map", "map-batch")


def _event_to_array(event: KVEvent) -> list[Any]:
    # msgspec writes every field of an array_like struct, defaults included.
    return [type(event).__name__, *(getattr(event, f) for f in event.__struct_fields__)]


def _event_to_map(event: KVEvent) -> dict[str, Any]:
    # msgspec omit_defaults: a field with a default (None here) is left out while unset;
    # fields without a default in vLLM are always written.
    out: dict[str, Any] = {"type": type(event).__name__}
    required = _REQUIRED_FIELDS[type(event)]
    for i, f in enumerate(event.__struct_fields__):
        value = getattr(event, f)
        if i < required or value is not None:
            out[f] = value
    return out


def encode_event_batch(batch: KVEventBatch, event_format: str = "array") -> bytes:
    """msgpack bytes identical to what vLLM's publisher sends for the same batch.

    "array": the batch and its events are positional arrays (vLLM before #42892); "map":
    events are maps tagged by "type" inside an array batch (vLLM #42892); "map-batch": the
    batch is a map too (later vLLM). See the module doc for which fields each writes.
    """
    if event_format == "array":
        return _encoder.encode([batch.ts, [_event_to_array(e) for e in batch.events], batch.data_parallel_rank])
    events = [_event_to_map(e) for e in batch.events]
    if event_format == "map":
        return _encoder.encode([batch.ts, events, batch.data_parallel_rank])
    if event_format == "map-batch":
        wire: dict[str, Any] = {"ts": batch.ts, "events": events}
        if batch.data_parallel_rank is not None:
            wire["data_parallel_rank"] = batch.data_parallel_rank
        return _encoder.encode(wire)
    raise ValueError(f"unknown KV event format {event_format!r}; use one of {EVENT_FORMATS}")


def decode_event_batch(payload: bytes) -> KVEventBatch:
    """Decode one payload frame, array- or map-shaped events; accepts older short forms and
    newer extra fields. Raises KVEventDecodeError on anything else."""
    try:
        return _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        first = KVEventDecodeError(f"not a vLLM KV event batch ({len(payload)} bytes): {e}")
    try:
        return _decode_map_events(payload)
    except KVEventDecodeError:
        raise first from None


_generic_decoder = msgspec.msgpack.Decoder()


def _decode_map_events(payload: bytes) -> KVEventBatch:
    try:
        raw = _generic_decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise KVEventDecodeError(f"not msgpack: {e}") from e
    if isinstance(raw, dict):  # the batch as a map (EventBatch without array_like)
        ts, events, rank = raw.get("ts"), raw.get("events"), raw.get("data_parallel_rank")
    elif isinstance(raw, list) and len(raw) >= 2:
        ts, events = raw[0], raw[1]
        rank = raw[2] if len(raw) > 2 else None
    else:
        raise KVEventDecodeError("event batch must be [ts, [events...], dp_rank?] or a map of those")
    if not isinstance(events, list):
        raise KVEventDecodeError("event batch events must be an array")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise KVEventDecodeError("event batch timestamp must be a number")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
        raise KVEventDecodeError("data_parallel_rank must be an integer")
    return KVEventBatch(ts=float(ts), events=[_map_event(e) for e in events], data_parallel_rank=rank)


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
    """The map's values in struct-field order (unknown keys ignored: forward compatible);
    trailing absent fields are left out."""
    values = [event.get(f) for f in fields]
    while values and values[-1] is None:
        values.pop()
    return values


def encode_seq(seq: int) -> bytes:
    """The 8-byte big-endian sequence frame."""
    return seq.to_bytes(8, "big", signed=seq < 0)


def decode_seq(frame: bytes) -> int:
    if len(frame) != 8:
        raise KVEventDecodeError(f"sequence frame must be 8 bytes, got {len(frame)}")
    return int.from_bytes(frame, "big", signed=True)
