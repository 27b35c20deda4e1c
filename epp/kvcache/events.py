"""vLLM KV-cache events: wire structs and msgpack encode/decode (vllm/distributed/kv_events.py).

vLLM publishes, per engine step with cache changes, a ZMQ PUB multipart message
`[topic, seq, payload]`: `seq` is an 8-byte big-endian counter per publisher and `payload`
is a msgpack `EventBatch` encoded by msgspec with `array_like=True`:

    [ts: float64, [event, ...], data_parallel_rank?]      (rank omitted when None)

Each event is a tagged array-like struct: its first element is the tag (class name):

    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
     lora_name, extra_keys?, group_idx?, kv_cache_spec_kind?, kv_cache_spec_sliding_window?]
    ["BlockRemoved", block_hashes, medium, group_idx?]
    ["AllBlocksCleared"]

Fields up to `lora_name` have no default in vLLM and are always written (older releases end
at `lora_id` or `medium`); the trailing optional ones are written only when set. Block hashes
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


# Fields vLLM always writes (no default there), per event type, after the tag.
_REQUIRED_FIELDS: dict[type[msgspec.Struct], int] = {BlockStored: 7, BlockRemoved: 1, AllBlocksCleared: 0}

_decoder = msgspec.msgpack.Decoder(KVEventBatch)
_encoder = msgspec.msgpack.Encoder()


def _event_to_wire(event: KVEvent) -> list[Any]:
    fields = event.__struct_fields__
    values = [getattr(event, f) for f in fields]
    keep = _REQUIRED_FIELDS[type(event)]
    # Trailing optional fields are dropped while unset, exactly like msgspec omit_defaults.
    last = len(values)
    while last > keep and values[last - 1] is None:
        last -= 1
    return [type(event).__name__, *values[:last]]


def encode_event_batch(batch: KVEventBatch) -> bytes:
    """msgpack bytes identical to what vLLM's publisher sends for the same batch."""
    wire: list[Any] = [batch.ts, [_event_to_wire(e) for e in batch.events]]
    if batch.data_parallel_rank is not None:
        wire.append(batch.data_parallel_rank)
    return _encoder.encode(wire)


def decode_event_batch(payload: bytes) -> KVEventBatch:
    """Decode one payload frame; accepts older short forms and newer extra trailing fields."""
    try:
        return _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise KVEventDecodeError(f"not a vLLM KV event batch ({len(payload)} bytes): {e}") from e


def encode_seq(seq: int) -> bytes:
    """The 8-byte big-endian sequence frame."""
    return seq.to_bytes(8, "big", signed=seq < 0)


def decode_seq(frame: bytes) -> int:
    if len(frame) != 8:
        raise KVEventDecodeError(f"sequence frame must be 8 bytes, got {len(frame)}")
    return int.from_bytes(frame, "big", signed=True)
