"""Per-endpoint load vectors shared by the load scorers (not a plugin: the underscore keeps it
out of auto-registration).

Every function maps attribute getters over the endpoints, so the per-endpoint work runs in C
(operator.attrgetter, map, max): at 64 pods a Python-level list comprehension over the same
attributes cost several times more per decision (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import add, attrgetter

from epp.datastore.endpoint import Endpoint

_inflight = attrgetter("inflight")
_peer_inflight = attrgetter("peer_inflight")
_running = attrgetter("metrics.running_requests")
_waiting = attrgetter("metrics.waiting_queue_size")


def waiting(endpoints: Sequence[Endpoint]) -> list[int]:
    """Scraped waiting requests per endpoint."""
    return list(map(_waiting, endpoints))


def inflight_requests(endpoints: Sequence[Endpoint]) -> list[int]:
    """Requests this EPP (all its workers) has in flight per endpoint: inflight + peer_inflight."""
    return list(map(add, map(_inflight, endpoints), map(_peer_inflight, endpoints)))


def request_load(endpoints: Sequence[Endpoint]) -> list[int]:
    """max(requests in flight from this EPP, the pod's scraped running + waiting) per endpoint:
    the ledger moves within a burst, the scrape also sees other EPP replicas' requests."""
    return list(map(max, inflight_requests(endpoints),
                    map(add, map(_running, endpoints), map(_waiting, endpoints))))
