"""The flow controller: when the pool is saturated, requests wait in the EPP instead of
being forwarded, and are released by priority, fairness and order as capacity frees.

Per request the server calls

    verdict = controller.admit(request, body_bytes)
    None          -> not saturated and nobody waiting: route now (the common, allocation-light path)
    RequestError  -> refused at once (queue limits): answer it (429 + Retry-After; 503 while the
                     pool has no healthy endpoint)
    QueueItem     -> queued: `await controller.wait(item)`, then route through the scheduler;
                     wait() raises RequestError on TTL expiry (429 while the pool has endpoints,
                     503 while it has none) or displacement (429), and CancelledError propagates
                     when the client leaves (the item is removed)

Status codes follow llm-d-router (pkg/epp/requestcontrol/admission.go
translateFlowControlOutcome): 429 = capacity exists but is contended (backpressure), 503 = no
serving capacity exists right now; the `x-llm-d-request-dropped-reason` header says why.

Two regimes (llm-d-router processor.go isExpired): while the pool has healthy endpoints a
queued request's budget is its TTL (defaultRequestTTL / requestTTLByObjective); while it has
none, noEndpointRequestTTL (a scale-from-zero waiting room). The budget in force is charged from
the later of enqueue and the last regime change, so a pod coming back gives waiting requests a
fresh saturation budget; the total wait is bounded by the longer of the two budgets.

and calls `controller.on_release()` when any routed request ends (capacity freed).

Dispatch (GIE v1.5 ShardProcessor.dispatchCycle; llm-d-router's per-priority usage limits):
bands are visited highest priority first; a band whose ceiling (the usage-limit policy's,
1.0 by default) the detector's saturation has reached stops the cycle (head-of-line
blocking: nothing lower goes either); otherwise the first band with work lets its fairness
policy pick a flow and hands that flow's head request over. One request is in hand-over at
a time: the next cycle runs only after the released request has been scheduled (its
in-flight count is visible to the detector), so a burst of dispatches cannot overshoot on a
stale reading. With priority-holdback-policy lower bands stop below 1.0, so the top band
finds free capacity without waiting for a request to end.

Eviction (enableEviction, off by default): with `evictionDelay` set, a blocked band whose
head has waited that long ends one in-flight request of priority <= evictionVictimMaxPriority
(and below its own), one at a time (the next only after the victim's stream ended);
without it, only a request that waited its whole TTL evicts (and takes the victim's place).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from epp.datastore.endpoint import Endpoint
from epp.flowcontrol.config import FlowControlConfig, may_evict_item
from epp.flowcontrol.interfaces import (
    AdaptiveUsageLimitPolicy,
    EvictionItem,
    EvictionOrderingPolicy,
    RequestLifecycleHooks,
)
from epp.flowcontrol.metrics import (
    DISPATCHED,
    DISPLACED,
    EVICTED_CANCELLED,
    EVICTED_INFLIGHT,
    EVICTED_NO_ENDPOINTS,
    EVICTED_TTL,
    REJECTED_CAPACITY,
    REJECTED_NO_ENDPOINTS,
    FlowControlMetrics,
)
from epp.flowcontrol.plugins.priority_then_time_eviction_order import PriorityThenTimeEvictionOrder
from epp.flowcontrol.queue import Band, QueueItem
from epp.headers import FAIRNESS_ID, OBJECTIVE
from epp.scheduling.types import LLMRequest
from epp.server.errors import RequestError

log = logging.getLogger("epp.flowcontrol")

DEFAULT_FAIRNESS_ID = "default-flow"  # GIE metadata.DefaultFairnessID
# While requests wait on a saturated pool, re-read the detector this often: scraped metrics
# change without any event the controller would see.
POLL_INTERVAL_S = 0.01
RETRY_AFTER_S = 1
# The bound on a queued request's total wait is the longer of the two budgets plus this margin
# (llm-d-router controller.go createRequestContext: 2 x its 1 s expiry sweep interval), so a
# request whose regime changed shortly before the bound still gets most of its fresh budget.
BACKSTOP_MARGIN_S = 2.0
# An evicted request whose stream has not ended after this long no longer blocks the next
# eviction (its response may have stalled, so the abort never fired).
EVICTION_CONFIRM_TIMEOUT_S = 1.0


DROPPED_REASON_HEADER = "x-llm-d-request-dropped-reason"  # llm-d-router pkg/common/error


def _noop() -> None:
    pass


def _reason(value: str) -> tuple[tuple[str, str], ...]:
    return ((DROPPED_REASON_HEADER, value),)


def _queue_full(what: str) -> RequestError:
    return RequestError(429, f"the inference pool is saturated and the {what} is full; retry later",
                        "flow_control_queue_full", retry_after_s=RETRY_AFTER_S,
                        headers=_reason("rejected-saturated"))


def _queue_full_no_endpoints(what: str) -> RequestError:
    return RequestError(503, f"the inference pool has no healthy endpoint and the {what} is full; "
                        "retry later", "flow_control_no_endpoints", retry_after_s=RETRY_AFTER_S,
                        headers=_reason("rejected-no-endpoints"))


_TTL_EXPIRED = ("the request waited in the flow-control queue for its whole TTL without capacity "
                "freeing up; retry later")
_NO_ENDPOINTS = ("the request waited in the flow-control queue for noEndpointRequestTTL and the "
                 "inference pool still has no healthy endpoint; retry later")
_DISPLACED = ("the request was displaced from the flow-control queue by higher-priority work; "
              "retry later")


class FlowController:
    def __init__(self, config: FlowControlConfig, endpoints: Callable[[], Sequence[Endpoint]],
                 metrics: FlowControlMetrics | None = None) -> None:
        self.config = config
        self.detector = config.detector
        self._endpoints = endpoints
        self.metrics = metrics or FlowControlMetrics(None)
        self._bands: dict[int, Band] = {}
        self._order: list[Band] = []  # highest priority first
        self.size = 0
        self.nbytes = 0
        self._seq = itertools.count()
        self._handoff: QueueItem | None = None
        self._kick_pending = False
        self._timer: asyncio.TimerHandle | None = None
        # enableEviction: in-flight requests the eviction filter accepted, which can be aborted
        # (id(request) -> item holding the request, so the id cannot be reused), oldest first.
        self._evictable: dict[int, EvictionItem] = {}
        self._default_eviction_order: EvictionOrderingPolicy = PriorityThenTimeEvictionOrder()
        self.evicted = 0
        # evictionDelay mode: the victim evicted last and not yet ended (stop-and-wait pacing).
        # Holds the request itself: an id() of a freed object could match a new request.
        self._evicting: tuple[LLMRequest, float] | None = None
        # Usage-limit ceiling per known priority (recomputed when a band appears or on reload).
        self._ceilings: dict[int, float] = {}
        # A usage-limit policy that depends on the saturation: asked once per dispatch cycle.
        self._adaptive: AdaptiveUsageLimitPolicy | None = None
        self._priorities: list[int] = []  # of self._order
        self._rank: dict[int, int] = {}  # priority -> index in self._order
        # Plugins with lifecycle hooks, and the requests they were told were dispatched
        # (id(request) -> request, flow id, the hooks told), so completion reaches the same ones.
        self._hooks: tuple[RequestLifecycleHooks, ...] = tuple(config.lifecycle_hooks)
        self._dispatched: dict[int, tuple[LLMRequest, str, tuple[RequestLifecycleHooks, ...]]] = {}
        # The unavailability regime: whether the pool had no healthy endpoint when last looked
        # at, since when (monotonic; 0 = never changed), and a future resolved (and replaced)
        # at each change so that queued requests re-evaluate their budget.
        self._empty = False
        self._empty_since = 0.0
        self._regime_changed: asyncio.Future[None] | None = None
        for priority in config.bands:  # configured bands are known from the start
            self._band(priority)

    # --- admission ------------------------------------------------------------------------
    def admit(self, request: LLMRequest, nbytes: int) -> RequestError | QueueItem | None:
        if self.size == 0 and self._handoff is None:
            endpoints = self._endpoints()
            if not endpoints or self._empty:
                self._observe(endpoints)
            saturation = self.detector.saturation(endpoints)
            self.metrics.saturation = saturation
            if self._adaptive is not None:
                # This admission is a dispatch cycle of its own (upstream enqueues it and runs
                # one): if it is gated, it waits for the next cycle (the poll), not an immediate
                # second one, which would consume another tick of the policy.
                band = self._band(request.priority)
                ceiling = self._adaptive.ceilings_at(saturation, self._priorities)[self._rank[band.priority]]
                if saturation >= ceiling:
                    verdict = self._enqueue(request, nbytes, kick=False)
                    if self._timer is None:
                        self._timer = asyncio.get_running_loop().call_later(POLL_INTERVAL_S, self._on_timer)
                    return verdict
                self._routed(request, band, 0.0)
                return None
            static = self._ceilings.get(request.priority)
            if static is None:
                static = self._band(request.priority).ceiling
            if saturation < static:
                self.metrics.count(request.priority, DISPATCHED)
                if self._hooks:
                    self._notify_dispatched(request, self._band(request.priority), 0.0)
                return None
        return self._enqueue(request, nbytes)

    def _routed(self, request: LLMRequest, band: Band, waited: float) -> None:
        self.metrics.count(request.priority, DISPATCHED)
        if self._hooks:
            self._notify_dispatched(request, band, waited)

    @staticmethod
    def flow_id(request: LLMRequest) -> str:
        return request.headers.get(FAIRNESS_ID) or DEFAULT_FAIRNESS_ID

    def _notify_dispatched(self, request: LLMRequest, band: Band, waited: float) -> None:
        """Tell the lifecycle hooks a request leaves flow control; the wait goes only to the
        fairness policy of its band (upstream: only that policy's Pick records it)."""
        flow_id = self.flow_id(request)
        fairness: object = band.config.fairness
        for hook in self._hooks:
            try:
                hook.on_dispatched(request, flow_id, waited if hook is fairness else None)
            except Exception:
                log.exception("flow-control plugin hook on_dispatched failed")
        self._dispatched[id(request)] = (request, flow_id, self._hooks)

    def _enqueue(self, request: LLMRequest, nbytes: int, kick: bool = True) -> RequestError | QueueItem:
        cfg = self.config
        priority = request.priority
        band = self._band(priority)
        if not band.fits(nbytes):
            return self._rejected(priority, f"queue of priority band {priority}")
        if not self._global_fits(nbytes) and not self._displace_for(priority, nbytes):
            return self._rejected(priority, "flow-control queue")
        headers = request.headers
        flow_id = headers.get(FAIRNESS_ID) or DEFAULT_FAIRNESS_ID
        objective = headers.get(OBJECTIVE) or request.model
        ttl = cfg.ttl_by_objective.get(objective, cfg.default_request_ttl)
        loop = asyncio.get_running_loop()
        item = QueueItem(request, flow_id, priority, nbytes, next(self._seq), time.monotonic(), ttl,
                         loop.create_future())
        item.sort_key = band.config.ordering.sort_key(item)
        band.flow(flow_id).push(item)
        band.size += 1
        band.nbytes += nbytes
        self.size += 1
        self.nbytes += nbytes
        size_g, bytes_g = item.gauges = self.metrics.gauges(flow_id, priority, request.model,
                                                            request.target_model)
        size_g.inc()
        bytes_g.inc(nbytes)
        if kick:
            self._kick()
        return item

    def _rejected(self, priority: int, what: str) -> RequestError:
        # With no endpoint, a full queue is genuine unavailability (503), not backpressure.
        if self._empty:
            self.metrics.count(priority, REJECTED_NO_ENDPOINTS)
            return _queue_full_no_endpoints(what)
        self.metrics.count(priority, REJECTED_CAPACITY)
        return _queue_full(what)

    def _observe(self, endpoints: Sequence[Endpoint]) -> None:
        """Track the unavailability regime (the pool has no healthy endpoint or has some)."""
        empty = not endpoints
        if empty != self._empty:
            self._empty, self._empty_since = empty, time.monotonic()
            changed, self._regime_changed = self._regime_changed, None
            if changed is not None and not changed.done():
                changed.set_result(None)

    def _budget(self, item: QueueItem) -> tuple[float, bool]:
        """The absolute deadline of the budget in force for `item` (inf: none) and whether it
        is the no-endpoint budget."""
        ttl = self.config.no_endpoint_request_ttl if self._empty else item.ttl
        deadline = float("inf")
        if ttl > 0:
            deadline = max(item.enqueued_at, self._empty_since) + ttl
        # A regime change grants a fresh budget but never extends the wait past the longer of
        # the two budgets (llm-d-router's context backstop; none when either budget is off).
        no_ep = self.config.no_endpoint_request_ttl
        if item.ttl > 0 and no_ep > 0:
            deadline = min(deadline, item.enqueued_at + max(item.ttl, no_ep) + BACKSTOP_MARGIN_S)
        return deadline, self._empty

    def _global_fits(self, nbytes: int) -> bool:
        cfg = self.config
        if cfg.max_requests and self.size + 1 > cfg.max_requests:
            return False
        return not (cfg.max_bytes and self.nbytes + nbytes > cfg.max_bytes)

    def _displace_for(self, priority: int, nbytes: int) -> bool:
        """Free global room by removing queued requests of lower priority (lowest priority
        first, newest first). Removes nothing unless enough can be freed."""
        cfg = self.config
        need_requests = self.size + 1 - cfg.max_requests if cfg.max_requests else 0
        need_bytes = self.nbytes + nbytes - cfg.max_bytes if cfg.max_bytes else 0
        victims: list[tuple[Band, QueueItem]] = []
        for band in reversed(self._order):
            if band.priority >= priority:
                break
            items = sorted((it for f in band.flows.values() for it in f.items()), key=lambda it: -it.seq)
            for it in items:
                if need_requests <= 0 and need_bytes <= 0:
                    break
                victims.append((band, it))
                need_requests -= 1
                need_bytes -= it.nbytes
        if need_requests > 0 or need_bytes > 0:
            return False
        for band, it in victims:
            self._leave(band, it, DISPLACED)
            if not it.future.done():
                it.future.set_result(RequestError(429, _DISPLACED, "flow_control_displaced",
                                                  retry_after_s=RETRY_AFTER_S))
            log.info("displaced a queued request", extra={"request_id": it.request.request_id,
                                                           "priority": it.priority, "for_priority": priority})
        return True

    async def wait(self, item: QueueItem) -> None:
        """Wait until `item` is dispatched; raises RequestError if it is refused instead."""
        # The item's future is never cancelled here (asyncio.wait leaves it alone): cancelling
        # it (TTL, client gone) would let a dispatch racing with the cancellation hand capacity
        # over to nobody.
        loop = asyncio.get_running_loop()
        try:
            while not item.future.done():
                deadline, empty = self._budget(item)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._expire(item, empty)
                    if item.removed and self._handoff is not item and not item.future.done():
                        return  # routed in an evicted request's place
                    break
                changed = self._regime_changed
                if changed is None:
                    changed = self._regime_changed = loop.create_future()
                await asyncio.wait((item.future, changed),
                                   timeout=None if remaining == float("inf") else remaining,
                                   return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the client left: Envoy closed the ext_proc stream
            if not item.removed:
                self._leave(self._bands[item.priority], item, EVICTED_CANCELLED)
            elif self._handoff is item:
                self._handoff = None
                self._kick()
            raise
        verdict = item.future.result()
        if verdict is not None:
            raise verdict
        if self._handoff is item:
            # The caller schedules synchronously right after this returns; the next cycle
            # runs after that, seeing this request's in-flight count.
            self._handoff = None
            self._kick()

    def _expire(self, item: QueueItem, empty: bool) -> None:
        """The budget in force ran out: evict `item` from the queue (its future gets the error),
        or, with enableEviction and endpoints, route it in an evicted request's place."""
        if item.removed:
            return
        band = self._bands[item.priority]
        if not empty and item.priority >= 0 and self.config.enable_eviction and self._evict_inflight(item):
            self._leave(band, item, DISPATCHED)  # routed now, in the evicted request's place
            if self._hooks:
                self._notify_dispatched(item.request, band, time.monotonic() - item.enqueued_at)
            return
        if empty:
            self._leave(band, item, EVICTED_NO_ENDPOINTS)
            error = RequestError(503, _NO_ENDPOINTS, "flow_control_no_endpoints", retry_after_s=RETRY_AFTER_S,
                                 headers=_reason("rejected-no-endpoints"))
        else:
            self._leave(band, item, EVICTED_TTL)
            error = RequestError(429, _TTL_EXPIRED, "flow_control_ttl_expired", retry_after_s=RETRY_AFTER_S,
                                 headers=_reason("rejected-ttl-expired"))
        item.future.set_result(error)

    def on_release(self, request: LLMRequest | None = None, response: Mapping[str, Any] | None = None) -> None:
        """A routed request ended: capacity may have freed. `response` carries its usage
        (prompt_tokens, completion_tokens) when the EPP saw it."""
        if request is not None:
            if self._evictable:
                self._evictable.pop(id(request), None)
            if self._evicting is not None and self._evicting[0] is request:
                self._evicting = None
            if self._dispatched:
                entry = self._dispatched.pop(id(request), None)
                if entry is not None and entry[0] is request:
                    for hook in entry[2]:
                        try:
                            hook.on_completed(request, entry[1], response)
                        except Exception:
                            log.exception("flow-control plugin hook on_completed failed")
        if self.size:
            self._kick()

    # --- eviction of in-flight sheddable requests (enableEviction, off by default) ----------
    def pod_priority(self, request: LLMRequest) -> int | None:
        """vLLM's body `priority` for a routed request (forwardPriorityToPods), else None:
        the objective priority negated, since vLLM handles lower values earlier."""
        return -request.priority if self.config.forward_priority_to_pods else None

    def may_evict(self, request: LLMRequest) -> bool:
        """Whether eviction may end this request (its response must then stream through the
        EPP): eviction on and the eviction filter accepts it (default: its priority is at most
        evictionVictimMaxPriority)."""
        cfg = self.config
        return cfg.enable_eviction and may_evict_item(cfg, EvictionItem(request, request.priority, 0.0, _noop))

    def on_evictable(self, request: LLMRequest, abort: Callable[[], None]) -> None:
        """An in-flight request whose response passes through the EPP, so `abort()` can end
        it (the server answers its next response chunk with an error: Envoy resets it)."""
        cfg = self.config
        if not cfg.enable_eviction:
            return
        item = EvictionItem(request, request.priority, time.monotonic(), abort)
        if may_evict_item(cfg, item):
            self._evictable[id(request)] = item

    def _evict_inflight(self, item: QueueItem) -> bool:
        """A request is blocked on a saturated pool: end the first in-flight request by the
        eviction ordering (default priority-then-time: the newest of the lowest priority) if
        its priority is below the waiting one's (upstream EvictN's priority bound)."""
        less = (self.config.eviction_ordering or self._default_eviction_order).less
        victim_key, best = None, None
        for key, cand in reversed(self._evictable.items()):  # newest first: it wins exact ties
            if best is None or less(cand, best):
                victim_key, best = key, cand
        if victim_key is None or best is None or best.priority >= item.priority:
            return False
        del self._evictable[victim_key]
        victim = best.request
        self._evicting = (victim, time.monotonic())
        best.abort()
        self.evicted += 1
        self.metrics.count(victim.priority, EVICTED_INFLIGHT)
        log.warning("evicted an in-flight sheddable request for a queued one past its TTL",
                    extra={"request_id": victim.request_id, "priority": victim.priority,
                           "for_request_id": item.request.request_id, "for_priority": item.priority})
        return True

    # --- dispatch -------------------------------------------------------------------------
    def _kick(self) -> None:
        if not self._kick_pending:
            self._kick_pending = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._kick_pending = False
        if self._handoff is not None or self.size == 0:
            return
        endpoints = self._endpoints()
        self._observe(endpoints)
        saturation = self.detector.saturation(endpoints)
        self.metrics.saturation = saturation
        if self._adaptive is not None:
            for band, ceiling in zip(self._order, self._adaptive.ceilings_at(saturation, self._priorities),
                                     strict=True):
                band.ceiling = ceiling
        for band in self._order:
            if saturation >= band.ceiling:  # blocked: head-of-line, nothing lower goes either
                if self.config.enable_eviction and self.config.eviction_delay is not None:
                    self._maybe_evict(band)
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(POLL_INTERVAL_S, self._on_timer)
                return
            if band.size == 0:
                continue
            flow = band.config.fairness.pick(band)
            item = flow.head() if flow is not None else None
            if flow is None or item is None:
                continue
            band.flows.move_to_end(flow.flow_id)  # round-robin turn order
            self._leave(band, item, DISPATCHED)
            if item.future.done():  # cannot happen (shielded); never stall the dispatcher on it
                self._kick()
                return
            if self._hooks:
                self._notify_dispatched(item.request, band, time.monotonic() - item.enqueued_at)
            self._handoff = item
            item.future.set_result(None)
            return

    def _maybe_evict(self, blocked: Band) -> None:
        """evictionDelay mode: the first blocked band, or a lower one, holds a request that has
        waited at least evictionDelay: evict one in-flight victim below its priority. One
        eviction at a time: the next waits until the victim's stream has ended (its capacity
        is then visible to the detector) or EVICTION_CONFIRM_TIMEOUT_S passed."""
        if not self._evictable:
            return
        now = time.monotonic()
        if self._evicting is not None and now - self._evicting[1] < EVICTION_CONFIRM_TIMEOUT_S:
            return
        delay = self.config.eviction_delay or 0.0
        start = self._order.index(blocked)
        for band in self._order[start:]:
            if band.size == 0:
                continue
            flow = band.config.fairness.pick(band)
            head = flow.head() if flow is not None else None
            if head is not None and now - head.enqueued_at >= delay and self._evict_inflight(head):
                return

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _leave(self, band: Band, item: QueueItem, outcome: str) -> None:
        item.removed = True
        flow = band.flows[item.flow_id]
        flow.size -= 1
        if flow.size == 0:
            del band.flows[item.flow_id]
        band.size -= 1
        band.nbytes -= item.nbytes
        self.size -= 1
        self.nbytes -= item.nbytes
        size_g, bytes_g = item.gauges
        size_g.dec()
        bytes_g.dec(item.nbytes)
        m = self.metrics
        m.count(item.priority, outcome)
        m.waited(item.flow_id, item.priority, outcome, item.request.model, item.request.target_model,
                 time.monotonic() - item.enqueued_at)

    def _band(self, priority: int) -> Band:
        band = self._bands.get(priority)
        if band is None:
            band = self._bands[priority] = Band(priority, self.config.band_config(priority))
            self._order = sorted(self._bands.values(), key=lambda b: -b.priority)
            self._compute_ceilings()
        return band

    def _compute_ceilings(self) -> None:
        """Ask the usage-limit policy for every known band's ceiling (bands are never
        dropped, so the set only grows; llm-d-router's registry keeps configured bands too)."""
        policy = self.config.usage_limit
        priorities = [b.priority for b in self._order]
        self._priorities = priorities
        self._rank = {p: i for i, p in enumerate(priorities)}
        if isinstance(policy, AdaptiveUsageLimitPolicy):
            # Ceilings come per dispatch cycle; until the first one every band is open.
            self._adaptive = policy
            ceilings = [1.0] * len(priorities)
        else:
            self._adaptive = None
            ceilings = policy.ceilings(priorities) if policy is not None else [1.0] * len(priorities)
        for band, ceiling in zip(self._order, ceilings, strict=True):
            band.ceiling = ceiling
        self._ceilings = dict(zip(priorities, ceilings, strict=True))

    # --- configuration ----------------------------------------------------------------------
    def reconfigure(self, config: FlowControlConfig) -> None:
        """Apply a reloaded config; queued requests keep their place (and sort keys)."""
        self.config = config
        self.detector = config.detector
        self._hooks = tuple(config.lifecycle_hooks)
        for priority, band in self._bands.items():
            band.config = config.band_config(priority)
        for priority in config.bands:
            self._band(priority)
        self._compute_ceilings()
        if not config.enable_eviction:
            self._evictable.clear()
        self._kick_if_running()

    def release_all(self) -> None:
        """Flow control was switched off: let every queued request go to the scheduler."""
        for band in self._order:
            for flow in list(band.flows.values()):
                for item in flow.items():
                    self._leave(band, item, DISPATCHED)
                    if not item.future.done():
                        item.future.set_result(None)

    def _kick_if_running(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.size:
            self._kick()

    # --- introspection (tests, debugging) -------------------------------------------------
    def queued(self, priority: int | None = None) -> int:
        if priority is None:
            return self.size
        band = self._bands.get(priority)
        return band.size if band is not None else 0
