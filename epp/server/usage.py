"""Token usage from an OpenAI-compatible response body, read as Envoy streams it to us.

Non-streaming: the JSON body's `usage` object. Streaming (SSE): the last `data:` event that
carries `usage` (sent when stream_options.include_usage is set). Memory stays bounded: a
non-streaming body is kept up to a cap, a stream only keeps its last partial line.
"""

from __future__ import annotations

import json
from typing import Any

_MAX_BODY = 1 << 20


class UsageParser:
    __slots__ = ("_buf", "_overflow", "_stream", "_usage")

    def __init__(self, stream: bool) -> None:
        self._stream = stream
        self._buf = bytearray()
        self._usage: dict[str, Any] | None = None
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not self._stream:
            if len(self._buf) + len(chunk) > _MAX_BODY:
                self._overflow = True
                return
            self._buf += chunk
            return
        self._buf += chunk
        if b"\n" not in chunk:
            return
        lines = bytes(self._buf).split(b"\n")
        self._buf = bytearray(lines.pop())
        for line in lines:
            if line.startswith(b"data:") and b'"usage"' in line:
                self._take(line[5:])

    def _take(self, data: bytes) -> None:
        try:
            obj = json.loads(data)
        except ValueError:
            return
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if isinstance(usage, dict):
            self._usage = usage

    def result(self) -> dict[str, Any]:
        if not self._stream and self._buf and not self._overflow and self._usage is None:
            self._take(bytes(self._buf))
        u = self._usage
        if not u:
            return {}
        out: dict[str, Any] = {}
        for key in ("prompt_tokens", "completion_tokens"):
            if isinstance(u.get(key), int):
                out[key] = u[key]
        details = u.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            out["cached_tokens"] = details["cached_tokens"]
        return out
