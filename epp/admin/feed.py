"""The handler's hook for explained live decisions (WatchDecisions, the x-epp-explain header).

The ext_proc handler asks `wants(request)` before scheduling. Only when the answer is yes
(a watcher's sample hit, or the opt-in debug header was asked for) does it schedule through
the traced path (`schedule`), then commits the decision as usual and publishes it on the
decision bus with the ExplainedDecision attached; each watcher's bus subscription keeps the
decisions sampled for it. Nobody watching and no header: `wants` is one call and two reads.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from epp.admin.explain import TracedCycle, schedule_traced
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.scheduling.types import CycleState, LLMRequest, SchedulingResult

EXPLAIN_HEADER = "x-epp-explain"


@dataclass(slots=True, frozen=True)
class WatchFilter:
    one_in: int = 1  # keep one decision in `one_in`
    model: str = ""
    endpoint: str = ""  # endpoint key or host:port


@dataclass(slots=True, eq=False)
class Watcher:
    id: int
    filter: WatchFilter
    seen: int = 0  # requests counted towards the sample


@dataclass(slots=True)
class ExplainedDecision:
    """What the handler attaches to a DecisionEvent it explained."""

    cycle: TracedCycle
    watchers: frozenset[int]  # the watchers whose sample selected this decision
    header: bool  # the client asked for x-epp-explain and the server allows it


@dataclass(slots=True)
class DecisionExplainer:
    """`header_enabled` is the server's opt-in flag (`epp serve --explain-header`): without
    it a request's x-epp-explain header is ignored, whatever its value."""

    header_enabled: bool = False
    datastore: Datastore | None = None  # for the header's fallback list
    max_fallbacks: int = 3
    watchers: tuple[Watcher, ...] = ()
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _selected: frozenset[int] = frozenset()
    _header: bool = False

    def add_watcher(self, flt: WatchFilter) -> Watcher:
        w = Watcher(next(self._ids), flt)
        self.watchers = (*self.watchers, w)
        return w

    def remove_watcher(self, watcher: Watcher) -> None:
        self.watchers = tuple(w for w in self.watchers if w is not watcher)

    @property
    def idle(self) -> bool:
        return not self.watchers and not self.header_enabled

    def wants(self, request: LLMRequest) -> bool:
        """Explain this request's decision? Samples per watcher (its model filter first)."""
        self._header = self.header_enabled and request.headers.get(EXPLAIN_HEADER, "").strip() == "1"
        watchers = self.watchers
        if not watchers:
            self._selected = frozenset()
            return self._header
        selected: list[int] = []
        for w in watchers:
            f = w.filter
            if f.model and f.model not in (request.model, request.target_model):
                continue
            w.seen += 1
            if f.one_in <= 1 or w.seen % f.one_in == 1:
                selected.append(w.id)
        self._selected = frozenset(selected)
        return self._header or bool(selected)

    def schedule(self, scheduler: Any, request: LLMRequest, endpoints: Sequence[Endpoint]
                 ) -> tuple[SchedulingResult, CycleState, ExplainedDecision]:
        """The real decision, traced (raises SchedulingError as Scheduler.schedule does)."""
        cycle = schedule_traced(scheduler, request, endpoints, dry_run=False)
        if cycle.error is not None:
            raise cycle.error
        assert cycle.result is not None
        return cycle.result, cycle.state, ExplainedDecision(cycle, self._selected, self._header)

    def header_value(self, detail: ExplainedDecision) -> str | None:
        """The x-epp-explain response header for a decision explained because the client
        asked (and the server allows it); None otherwise."""
        if not detail.header:
            return None
        from epp.admin.decision import summary, to_proto

        decision = to_proto(detail.cycle, self.datastore or Datastore(), max_fallbacks=self.max_fallbacks,
                            dry_run=False)
        return summary(decision)
