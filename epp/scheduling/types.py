"""Data passed between the scheduler and its plugins."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from epp.datastore.endpoint import Endpoint


@dataclass(slots=True)
class LLMRequest:
    """What the scheduler knows about one request.

    `prompt` is the raw completion prompt (completions API) and `messages` the chat messages
    (chat API); exactly one is set. `prompt_text()` gives a flat text for approximate prefix
    hashing without applying a chat template. `body` is the parsed JSON body (dict) and is
    only to be read. `candidates` restricts the choice to a subset (Envoy's subset hint);
    None means the whole pool.
    """

    request_id: str
    model: str  # model name as sent by the client
    target_model: str  # after InferenceObjective rewrite (may equal model)
    path: str = "/v1/completions"
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    stream: bool = False
    max_tokens: int | None = None
    priority: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    candidates: frozenset[str] | None = None  # hostports allowed by the subset hint
    is_chat: bool = False
    _flat: str | None = None

    def prompt_text(self) -> str:
        """Prompt as one string: the completion prompt, or chat messages joined role:content."""
        if self._flat is None:
            if self.prompt is not None:
                self._flat = self.prompt
            elif self.messages is not None:
                parts: list[str] = []
                for m in self.messages:
                    content = m.get("content", "")
                    if isinstance(content, list):  # OpenAI content parts
                        content = "".join(
                            p.get("text", "") for p in content if isinstance(p, dict)
                        )
                    parts.append(f"{m.get('role', '')}:{content}\n")
                self._flat = "".join(parts)
            else:
                self._flat = ""
        return self._flat


class CycleState(dict[str, Any]):
    """Per-decision scratch space shared by the plugins of one scheduling cycle.

    Keys are plugin-chosen strings (use the plugin type name as a prefix), e.g. the prefix
    hashes computed once by a scorer and read again by its pre-request hook.
    """


# Prefix scorers publish, under "<plugin name>" + this suffix, a dict Endpoint.key -> prompt
# tokens that endpoint already holds in its prefix cache (read by pd-profile-handler, the
# latency plugins and the in-flight ledger's prefill charge).
CACHED_TOKENS_SUFFIX = ".cached-tokens"


def cached_prompt_tokens(state: CycleState) -> dict[str, int] | None:
    """This cycle's cached prompt tokens per endpoint key (the largest when several prefix
    scorers ran); None when no prefix scorer ran."""
    found: dict[str, int] | None = None
    for key, value in state.items():
        if key.endswith(CACHED_TOKENS_SUFFIX) and isinstance(value, dict) and value:
            found = value if found is None else {k: max(v, found.get(k, 0)) for k, v in value.items()}
    return found


@dataclass(slots=True)
class ScoredEndpoint:
    endpoint: Endpoint
    score: float


@dataclass(slots=True)
class ProfileRunResult:
    """Outcome of one scheduling profile: targets ordered best first (first is the pick,
    the rest are fallbacks Envoy may try)."""

    targets: list[Endpoint]
    scores: dict[str, float] = field(default_factory=dict)  # endpoint key -> weighted score


@dataclass(slots=True)
class SchedulingResult:
    """All profile results of one decision and which profile names the destination."""

    profile_results: dict[str, ProfileRunResult | None]
    primary_profile: str
    # Extra request headers to set upstream (e.g. x-prefiller-host-port for P/D).
    headers: dict[str, str] = field(default_factory=dict)
    # Headers to set on the response to the client (e.g. llm-d's x-session-token); needs
    # Envoy's response_header_mode SEND.
    response_headers: dict[str, str] = field(default_factory=dict)
    # Set by a PreRequest plugin: the routing answer waits for it (predicted-latency-producer's
    # deferral). It must end by itself, and not raise.
    dispatch_after: Awaitable[None] | None = None

    @property
    def primary(self) -> ProfileRunResult | None:
        return self.profile_results.get(self.primary_profile)


class SchedulingError(Exception):
    """No endpoint can serve the request. `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 503, code: str = "service_unavailable",
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s  # answered as Retry-After (e.g. a 429)
