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


# --- usage accounting (Prometheus) -----------------------------------------------------------

OVERFLOW = "__other__"  # label value once max_series label sets exist (as epp/observability/metrics.py)


def stream_usage_requested(body: dict[str, Any]) -> bool:
    """The streaming request asks for the final usage chunk (stream_options.include_usage)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def with_stream_usage(body: dict[str, Any]) -> dict[str, Any]:
    """A copy of the body that asks for the usage chunk; other stream_options are kept."""
    options = body.get("stream_options")
    return {**body, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}


class UsageMetrics:
    """Prompt, completion and cached prompt tokens, per model, target model and tenant.

    Read from the pod's response (the `usage` object, or the last SSE chunk carrying one);
    streaming responses report usage only with stream_options.include_usage, which
    `epp serve --stream-include-usage` adds to every streaming request. Responses without
    usage are counted under usage="missing", so a gap in the accounting shows.
    Label sets are bounded (max_series; beyond it they fold into "__other__").
    """

    def __init__(self, registry: Any, max_series: int = 2000) -> None:
        from epp.observability.fastmetrics import FastCounter as Counter  # per response: lock-free

        labels = ["model_name", "target_model_name", "tenant"]
        self.prompt = Counter("epp_usage_prompt_tokens", "Prompt tokens reported by the model servers.",
                              labels, registry=registry)
        self.completion = Counter("epp_usage_completion_tokens", "Completion tokens reported by the model servers.",
                                  labels, registry=registry)
        self.cached = Counter("epp_usage_cached_prompt_tokens",
                              "Prompt tokens served from the prefix cache (usage.prompt_tokens_details.cached_tokens).",
                              labels, registry=registry)
        self.responses = Counter("epp_usage_responses", "Completed responses, by whether they reported usage.",
                                 [*labels, "usage"], registry=registry)
        self.max_series = max_series
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any, Any, Any]] = {}

    def _series(self, key: tuple[str, str, str]) -> tuple[Any, Any, Any, Any, Any]:
        children = self._children.get(key)
        if children is None:
            if len(self._children) >= self.max_series:
                key = (OVERFLOW, OVERFLOW, OVERFLOW)
                children = self._children.get(key)
                if children is not None:
                    return children
            children = (self.prompt.labels(*key), self.completion.labels(*key), self.cached.labels(*key),
                        self.responses.labels(*key, "reported"), self.responses.labels(*key, "missing"))
            self._children[key] = children
        return children

    def record(self, model: str, target_model: str, tenant: str, usage: dict[str, Any]) -> None:
        prompt, completion, cached, reported, missing = self._series((model, target_model, tenant))
        if "prompt_tokens" not in usage and "completion_tokens" not in usage:
            missing.inc()
            return
        reported.inc()
        prompt.inc(usage.get("prompt_tokens", 0))
        completion.inc(usage.get("completion_tokens", 0))
        cached.inc(usage.get("cached_tokens", 0))
