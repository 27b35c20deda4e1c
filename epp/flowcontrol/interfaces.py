"""Extension points of the flow-control layer (GIE pkg/epp/framework/interface/flowcontrol).

- SaturationDetector: how full the pool is, 0.0 (idle) .. 1.0 (at capacity) and beyond.
  The flow controller holds requests back while saturation >= 1.0; the legacy admission
  path (flow control off) rejects sheddable requests at >= 1.0.
- InflightLoad: the EPP's own count of requests/tokens sent to a pod and not yet finished,
  read by the concurrency detector.
- OrderingPolicy: which request of one flow goes first (a sort key, lower first).
- FairnessPolicy: which flow of a priority band is served next; one that also implements
  RequestLifecycleHooks hears of every dispatch and completion (program-aware-fairness).
- UsageLimitPolicy / AdaptiveUsageLimitPolicy: the per-band dispatch ceilings.
- EvictionFilterPolicy / EvictionOrderingPolicy: which in-flight requests eviction may end,
  and in what order (llm-d-router framework/interface/flowcontrol/eviction.go).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from epp.datastore.endpoint import Endpoint
from epp.scheduling.types import LLMRequest

if TYPE_CHECKING:
    from epp.flowcontrol.queue import Band, Flow, QueueItem


@runtime_checkable
class SaturationDetector(Protocol):
    name: str

    def saturation(self, endpoints: Sequence[Endpoint]) -> float:
        """Pool saturation over `endpoints`; >= 1.0 means no room for more work."""
        ...


class InflightLoad(Protocol):
    """Requests and (estimated) tokens this EPP has in flight to one pod."""

    def requests(self, ep: Endpoint) -> int: ...
    def tokens(self, ep: Endpoint) -> int: ...


@runtime_checkable
class OrderingPolicy(Protocol):
    name: str

    def sort_key(self, item: QueueItem) -> float:
        """Lower goes first; ties are broken by arrival order."""
        ...


@runtime_checkable
class FairnessPolicy(Protocol):
    name: str

    def pick(self, band: Band) -> Flow | None:
        """The flow of `band` whose head request is dispatched next (None: band empty)."""
        ...


@runtime_checkable
class UsageLimitPolicy(Protocol):
    """How much of the pool each priority band may fill (llm-d-router's UsageLimitPolicy,
    `flowControl.usageLimitPolicyPluginRef`): a band dispatches only while the pool's
    saturation is below its ceiling, so a ceiling below 1.0 keeps headroom for the bands
    above. Ceilings must not increase from higher to lower priority (the dispatch cycle stops
    at the first blocked band).

    These ceilings do not depend on the current saturation (static and priority-holdback
    upstream do not use it), so the controller computes them once per change of the band set
    and the admission fast path reads a dict; a policy that needs the saturation implements
    AdaptiveUsageLimitPolicy instead."""

    name: str

    def ceilings(self, priorities: Sequence[int]) -> list[float]:
        """One ceiling in [0, 1] per priority of `priorities` (highest first)."""
        ...


@runtime_checkable
class AdaptiveUsageLimitPolicy(Protocol):
    """A usage-limit policy whose ceilings depend on the current saturation (upstream's full
    ComputeLimit(saturation, priorities) contract; soft-reflective-ceiling-policy). The
    controller calls it once per dispatch cycle, like upstream: a request admitted on the fast
    path (nothing queued) counts as one cycle, and so does every run of the dispatch loop.
    The policy may keep small state across calls (upstream permits a tick for spreading
    dispatch), so two calls with the same inputs need not agree."""

    name: str

    def ceilings_at(self, saturation: float, priorities: Sequence[int]) -> list[float]:
        """One ceiling per priority of `priorities` (highest first) for this cycle."""
        ...


@runtime_checkable
class RequestLifecycleHooks(Protocol):
    """Optional hooks of a flow-control plugin (upstream: a plugin that is also a
    requestcontrol PreRequest and ResponseBodyProcessor). Every configured plugin that has
    them hears of every request flow control routes, whichever band it belongs to.

    `on_dispatched`: the request leaves flow control for the scheduler; `waited` is the time it
    spent in flow control (seconds; 0.0 when it went straight through) when this plugin is the
    fairness policy of the request's band, else None (upstream: only the fairness policy's Pick
    records the enqueue time). `on_completed`: the dispatched request ended (also refused by
    the scheduler, failed or cancelled); `usage` holds `prompt_tokens` / `completion_tokens`
    when the EPP saw the response's usage, else None or without them."""

    def on_dispatched(self, request: LLMRequest, flow_id: str, waited: float | None) -> None: ...
    def on_completed(self, request: LLMRequest, flow_id: str, usage: Mapping[str, Any] | None) -> None: ...


@dataclass(slots=True, eq=False)
class EvictionItem:
    """An in-flight request that eviction could end (upstream flowcontrol.EvictionItem)."""

    request: LLMRequest
    priority: int
    # time.monotonic() when the request became evictable: its response started to stream
    # through the EPP (our stand-in for upstream's DispatchTime; see docs/flow-control.md).
    dispatch_time: float
    abort: Callable[[], None]

    @property
    def request_id(self) -> str:
        return self.request.request_id


@runtime_checkable
class EvictionFilterPolicy(Protocol):
    """Which in-flight requests may be evicted at all (upstream EvictionFilterPolicy.Accept)."""

    name: str

    def accept(self, item: EvictionItem) -> bool: ...


@runtime_checkable
class EvictionOrderingPolicy(Protocol):
    """Which evictable request goes first (upstream EvictionOrderingPolicy.Less)."""

    name: str

    def less(self, a: EvictionItem, b: EvictionItem) -> bool:
        """True if `a` should be evicted before `b`."""
        ...
