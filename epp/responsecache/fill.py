"""Assemble a pod's answer while it flows back to the client, and turn it into a cache entry.

Only a complete 200 answer is stored: a JSON completion with `choices`, or an SSE stream whose
every event is a JSON chunk and whose last event is `data: [DONE]`. A stream cut by the pod or
the network never gets its end-of-stream body message (the ext_proc stream just ends) or lacks
the `[DONE]` event, and is dropped. The stored entry is what a hit sends back, already in its
final form (usage marks every prompt token as cached: nothing was computed for this answer),
so a hit costs one store read and no JSON work.
"""

from __future__ import annotations

from typing import Any

import msgspec

# Reasons an answer was not stored (the `reason` label of epp_response_cache_skipped_total).
NOT_200 = "status_not_200"
TOO_LARGE = "too_large"
INCOMPLETE = "incomplete"
INVALID = "invalid_response"

_DONE = b"[DONE]"


class ResponseAssembler:
    __slots__ = ("_chunks", "_size", "complete", "max_bytes", "overflow", "stream")

    def __init__(self, stream: bool, max_bytes: int) -> None:
        self.stream = stream
        self.max_bytes = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0
        self.overflow = False
        self.complete = False

    def feed(self, chunk: bytes, end_of_stream: bool) -> None:
        if chunk and not self.overflow:
            self._size += len(chunk)
            if self._size > self.max_bytes:
                self.overflow = True
                self._chunks = []
            else:
                self._chunks.append(chunk)
        if end_of_stream:
            self.complete = True

    def entry(self) -> bytes | str:
        """The bytes to store, or the reason not to."""
        if self.overflow:
            return TOO_LARGE
        if not self.complete:
            return INCOMPLETE
        body = b"".join(self._chunks)
        out = sse_entry(body) if self.stream else json_entry(body)
        if isinstance(out, bytes) and len(out) > self.max_bytes:
            return TOO_LARGE
        return out


def json_entry(body: bytes) -> bytes | str:
    try:
        obj = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return INVALID
    if not isinstance(obj, dict) or "error" in obj or not isinstance(obj.get("choices"), list) \
            or not obj["choices"]:
        return INVALID
    _mark_cached(obj)
    return msgspec.json.encode(obj)


def sse_entry(body: bytes) -> bytes | str:
    events: list[bytes] = []
    done = False
    body = body.replace(b"\r\n", b"\n")
    if not body.endswith(b"\n\n"):
        return INCOMPLETE  # cut inside an event
    for block in body.split(b"\n\n"):
        data = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
        if not data:
            continue
        if done:
            return INVALID  # events after [DONE]
        payload = b"\n".join(data)
        if payload.strip() == _DONE:
            done = True
            continue
        try:
            obj = msgspec.json.decode(payload)
        except (msgspec.DecodeError, RecursionError):
            return INVALID
        if not isinstance(obj, dict) or "error" in obj:
            return INVALID
        if "usage" in obj:
            _mark_cached(obj)
            payload = msgspec.json.encode(obj)
        events.append(payload)
    if not done:
        return INCOMPLETE
    if not events:
        return INVALID
    return b"".join(b"data: " + e + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def _mark_cached(obj: dict[str, Any]) -> None:
    usage = obj.get("usage")
    if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
        return
    details = usage.get("prompt_tokens_details")
    details = dict(details) if isinstance(details, dict) else {}
    details["cached_tokens"] = usage["prompt_tokens"]
    usage["prompt_tokens_details"] = details
