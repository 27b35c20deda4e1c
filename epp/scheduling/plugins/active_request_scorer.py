"""active-request-scorer: prefer endpoints with fewer requests in flight from this EPP (llm-d).

Reads the EPP's own ledger (epp.datastore.inflight: `Endpoint.inflight` plus the other
workers' `peer_inflight`), which moves the moment a request is dispatched, so a burst that
arrives between two scrapes still spreads over the pool. Score as llm-d's scorer:
(max - count) / max over the scored endpoints, so an endpoint with nothing in flight scores
1 and the busiest 0; when nothing is in flight anywhere every endpoint scores 1 (the
picker's random tie-break then spreads the load).

`includeScraped` (false: llm-d's behaviour) counts max(ledger count, the pod's scraped
running + waiting) instead: the ledger only knows this EPP's requests, the scrape also sees
other EPP replicas' and clients that bypass the gateway, and the max (not the sum) avoids
counting our own requests twice once the scrape catches up.

`requestTimeout` (llm-d's parameter, a duration such as "30s" or "2m") bounds how long a
request without a completion keeps counting. The tracker is shared by every plugin of the
EPP, so the shortest timeout configured anywhere (or `epp serve --inflight-timeout`) wins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.datastore.inflight import SERVICE_KEY as TRACKER_KEY
from epp.datastore.inflight import InflightTracker
from epp.scheduling.plugins._loads import cycle_request_load, inflight_requests
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds of a Go-style duration ("1m30s", "250ms", "2h"); ValueError otherwise."""
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"parameter 'requestTimeout' must be a duration such as \"30s\" or \"2m\", got {text!r}")
    return total


@register_plugin
class ActiveRequestScorer:
    type_name: ClassVar[str] = "active-request-scorer"
    consumes: ClassVar[tuple[str, ...]] = ("inflight", "peer_inflight", "metrics.running_requests",
                                           "metrics.waiting_queue_size")

    @dataclass(slots=True)
    class Params:
        request_timeout: str = ""  # empty: the tracker's timeout (epp serve --inflight-timeout)
        include_scraped: bool = False

        def validate(self) -> None:
            if self.request_timeout and parse_duration(self.request_timeout) <= 0:
                raise ValueError(f"parameter 'requestTimeout' must be > 0, got {self.request_timeout!r}")

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        tracker = ctx.services.get(TRACKER_KEY) if ctx is not None else None
        if isinstance(tracker, InflightTracker) and self.params.request_timeout:
            timeout = parse_duration(self.params.request_timeout)
            tracker.config.request_timeout_s = min(tracker.config.request_timeout_s, timeout)

    def score(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        counts = cycle_request_load(state, endpoints) if self.params.include_scraped else inflight_requests(endpoints)
        busiest = max(counts)
        if busiest <= 0:
            return [1.0] * len(counts)
        return [(busiest - c) / busiest for c in counts]
