"""token-load-scorer: prefer endpoints with fewer tokens in flight from this EPP (GIE).

Reads the EPP's own ledger (epp.datastore.inflight): per endpoint, the estimated tokens of
the requests dispatched and not yet completed (prompt tokens + expected decode tokens), this
worker's plus the other workers'. Score as GIE's scorer:
1 - min(1, tokens / queueThresholdTokens), so an idle endpoint scores 1 and one holding
`queueThresholdTokens` or more scores 0. Unlike a request count it tells a pod prefilling
three 30k-token prompts from one serving three short chats.

GIE's default threshold (4,194,304 tokens: 128 requests of 32k) makes the score nearly flat on
small pods; set it near what one pod can hold (e.g. its KV-cache size in tokens) to make the
score move over the range that matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest

GIE_DEFAULT_QUEUE_THRESHOLD_TOKENS = 4_194_304


@register_plugin
class TokenLoadScorer:
    type_name: ClassVar[str] = "token-load-scorer"
    consumes: ClassVar[tuple[str, ...]] = ("inflight_tokens", "peer_inflight_tokens")

    @dataclass(slots=True)
    class Params:
        queue_threshold_tokens: int = GIE_DEFAULT_QUEUE_THRESHOLD_TOKENS

        def validate(self) -> None:
            if self.queue_threshold_tokens <= 0:
                raise ValueError(
                    f"parameter 'queueThresholdTokens' must be > 0, got {self.queue_threshold_tokens}")

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        self._threshold = float(self.params.queue_threshold_tokens)

    def score(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        threshold = self._threshold
        out: list[float] = []
        for ep in endpoints:
            tokens = ep.inflight_tokens + ep.peer_inflight_tokens
            out.append(1.0 if tokens <= 0 else (0.0 if tokens >= threshold else 1.0 - tokens / threshold))
        return out
