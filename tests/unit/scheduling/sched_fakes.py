"""Small builders shared by the scheduler unit tests (fake endpoints, requests, contexts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint, EndpointMetrics
from epp.scheduling.registry import PluginContext
from epp.scheduling.types import CycleState, LLMRequest, ScoredEndpoint


def endpoint(
    name: str,
    *,
    port: int = 8000,
    address: str = "127.0.0.1",
    queue: int = 0,
    running: int = 0,
    kv: float = 0.0,
    inflight: int = 0,
    labels: dict[str, str] | None = None,
    **metrics: Any,
) -> Endpoint:
    ep = Endpoint(
        name=name,
        address=address,
        port=port,
        labels=labels or {},
        metrics=EndpointMetrics(
            waiting_queue_size=queue, running_requests=running, kv_cache_usage=kv, **metrics
        ),
    )
    ep.inflight = inflight
    return ep


def pool(count: int, **kwargs: Any) -> list[Endpoint]:
    return [endpoint(f"pod-{i}", port=8000 + i, **kwargs) for i in range(count)]


def request(
    prompt: str | None = "hello world",
    *,
    model: str = "base-model",
    request_id: str = "req-1",
    candidates: frozenset[str] | None = None,
    **kwargs: Any,
) -> LLMRequest:
    return LLMRequest(
        request_id=request_id, model=model, target_model=model, prompt=prompt,
        candidates=candidates, **kwargs,
    )


def streamed_request(prompt: str | None = "hello world", **kwargs: Any) -> LLMRequest:
    """A request whose response is streamed: the latency runtime learns only from those (the
    headers of a response not streamed come with its end, not its first token)."""
    kwargs.setdefault("stream", True)
    return request(prompt, **kwargs)


def context(datastore: Datastore | None = None) -> PluginContext:
    return PluginContext(datastore=datastore or Datastore(), source="test.yaml")


def scored(endpoints: Sequence[Endpoint], scores: Sequence[float]) -> list[ScoredEndpoint]:
    return [ScoredEndpoint(ep, s) for ep, s in zip(endpoints, scores, strict=True)]


def state() -> CycleState:
    return CycleState()
