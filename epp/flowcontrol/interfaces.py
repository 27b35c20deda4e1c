"""Extension points of the flow-control layer (GIE pkg/epp/framework/interface/flowcontrol).

- SaturationDetector: how full the pool is, 0.0 (idle) .. 1.0 (at capacity) and beyond.
  The flow controller holds requests back while saturation >= 1.0; the legacy admission
  path (flow control off) rejects sheddable requests at >= 1.0.
- InflightLoad: the EPP's own count of requests/tokens sent to a pod and not yet finished,
  read by the concurrency detector.
- OrderingPolicy: which request of one flow goes first (a sort key, lower first).
- FairnessPolicy: which flow of a priority band is served next.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from epp.datastore.endpoint import Endpoint

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

    Unlike upstream's ComputeLimit the ceilings do not depend on the current saturation (no
    built-in policy upstream uses it), so the controller computes them once per change of the
    band set and the admission fast path reads a dict."""

    name: str

    def ceilings(self, priorities: Sequence[int]) -> list[float]:
        """One ceiling in [0, 1] per priority of `priorities` (highest first)."""
        ...
