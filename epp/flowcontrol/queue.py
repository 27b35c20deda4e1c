"""Queue data: a request waiting in the EPP (QueueItem), the per-flow queue (Flow) and the
per-priority band (Band) that holds the flows.

A Flow is a heap ordered by (ordering policy key, arrival sequence); a request that leaves
early (client gone, TTL, displaced) is marked removed and skipped lazily when it reaches the
top, while the size and byte counters are adjusted at once, so limits see the truth.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from epp.scheduling.types import LLMRequest

if TYPE_CHECKING:
    from epp.flowcontrol.config import BandConfig


@dataclass(slots=True, eq=False)
class QueueItem:
    request: LLMRequest
    flow_id: str
    priority: int
    nbytes: int
    seq: int
    enqueued_at: float  # time.monotonic()
    ttl: float  # seconds; 0 = no TTL (waits until dispatched or the client leaves)
    future: asyncio.Future[Any]
    removed: bool = False
    sort_key: float = 0.0
    # Prometheus children for this item's labels, bound once at enqueue (see metrics.py).
    gauges: Any = None

    @property
    def deadline(self) -> float:
        """Absolute monotonic deadline (inf without TTL)."""
        return self.enqueued_at + self.ttl if self.ttl > 0 else float("inf")


class Flow:
    """The queued requests of one fairness ID within one priority band."""

    __slots__ = ("_heap", "flow_id", "size")

    def __init__(self, flow_id: str) -> None:
        self.flow_id = flow_id
        self._heap: list[tuple[float, int, QueueItem]] = []
        self.size = 0

    def push(self, item: QueueItem) -> None:
        heapq.heappush(self._heap, (item.sort_key, item.seq, item))
        self.size += 1

    def head(self) -> QueueItem | None:
        heap = self._heap
        while heap and heap[0][2].removed:
            heapq.heappop(heap)
        return heap[0][2] if heap else None

    def pop(self) -> QueueItem | None:
        item = self.head()
        if item is not None:
            heapq.heappop(self._heap)
        return item

    def items(self) -> list[QueueItem]:
        return [entry[2] for entry in self._heap if not entry[2].removed]


@dataclass(slots=True, eq=False)
class Band:
    """All flows of one priority level. `flows` keeps round-robin order: a served flow moves
    to the end, an emptied flow is dropped, a new flow joins at the end."""

    priority: int
    config: BandConfig
    flows: OrderedDict[str, Flow] = field(default_factory=OrderedDict)
    size: int = 0
    nbytes: int = 0
    ceiling: float = 1.0  # the usage-limit policy's: dispatch only while saturation < ceiling

    def flow(self, flow_id: str) -> Flow:
        f = self.flows.get(flow_id)
        if f is None:
            f = self.flows[flow_id] = Flow(flow_id)
        return f

    def fits(self, nbytes: int) -> bool:
        cfg = self.config
        if cfg.max_requests and self.size + 1 > cfg.max_requests:
            return False
        return not (cfg.max_bytes and self.nbytes + nbytes > cfg.max_bytes)
