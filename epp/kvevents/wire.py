"""Payload decoding that accepts both wire shapes vLLM has used for KV events.

vLLM encoded each event as a tagged positional array (`["BlockStored", hashes, ...]`) until
vllm-project/vllm#42892 (merged 2026-06) switched the inner events to tagged *maps*
(`{"type": "BlockStored", "block_hashes": [...], ...}`) while the outer EventBatch stayed an
array. epp.kvcache.events decodes both forms, so one EPP follows old and new vLLM pods
alike; this module keeps the subscriber's entry point. Unknown map keys are ignored (forward
compatible); a missing required field or a wrong type rejects the whole payload.
"""

from __future__ import annotations

from epp.kvcache.events import KVEventBatch, decode_event_batch


def decode_payload(payload: bytes) -> KVEventBatch:
    """Decode one KV-event payload (array- or map-shaped events); raises KVEventDecodeError."""
    return decode_event_batch(payload)
