"""The epp.v1.Admin service: Explain (dry run), WatchDecisions (live, sampled), GetPool.

Everything here only reads the serving EPP's state; Explain runs the scheduler in dry-run
mode (epp/admin/explain.py), so an operator can ask "where would this request go, and why"
against production without moving a single request or counter.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from epp.admin.decision import to_proto
from epp.admin.explain import TracedCycle, schedule_traced
from epp.admin.feed import DecisionExplainer, ExplainedDecision, WatchFilter
from epp.admin.proto import pb
from epp.admin.stats import DecisionStatsCollector
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.headers import canonicalize
from epp.observability.decisions import DecisionBus, DecisionEvent
from epp.scheduling.types import CycleState, LLMRequest
from epp.server.errors import RequestError
from epp.server.request import parse_request

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
WATCH_BUFFER = 256  # decisions a slow watcher may lag behind before they are dropped (counted)


@dataclass(slots=True)
class AdminState:
    """What the admin service reads from the serving EPP (all owned by epp.server.app)."""

    datastore: Datastore
    scheduler: Callable[[], Any]  # the current Scheduler (swapped on config reload)
    bus: DecisionBus
    explainer: DecisionExplainer
    stats: DecisionStatsCollector = field(default_factory=DecisionStatsCollector)
    services: dict[str, Any] = field(default_factory=dict)  # PluginContext.services
    max_fallbacks: int = 3
    config_source: str = ""


class AdminService:
    """The servicer (registered with pb_grpc.add_AdminServicer_to_server)."""

    def __init__(self, state: AdminState) -> None:
        self.state = state
        self._ids = itertools.count(1)

    # --- Explain ------------------------------------------------------------------------------
    async def Explain(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ExplainResponse(decision=self.explain(request))

    def explain(self, request: Any) -> Any:
        """The dry-run decision for an ExplainRequest (also used by tests without gRPC)."""
        st = self.state
        headers = {k.lower(): v for k, v in request.headers.items()}
        canonicalize(headers)  # as the ext_proc handler does with Envoy's headers
        body: bytes = request.body
        path = request.path or (CHAT_PATH if b'"messages"' in body else COMPLETIONS_PATH)
        request_id = headers.get("x-request-id") or f"explain-{next(self._ids)}"
        try:
            llm = parse_request(body, path, request_id, headers, st.datastore)
        except RequestError as e:
            return _refused(request_id, e.message, e.status)
        subset = frozenset(request.subset) if request.subset else None
        llm.candidates = subset
        endpoints = _eligible(st.datastore, subset)
        if not endpoints:
            return _refused(request_id, _no_endpoint_message(st.datastore, subset), 503, llm)
        cycle = schedule_traced(st.scheduler(), llm, endpoints, dry_run=True)
        return to_proto(cycle, st.datastore, max_fallbacks=st.max_fallbacks, dry_run=True)

    # --- WatchDecisions -----------------------------------------------------------------------
    async def WatchDecisions(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        st = self.state
        flt = WatchFilter(max(1, request.sample_one_in), request.model, request.endpoint)
        watcher = st.explainer.add_watcher(flt)
        wanted = flt.endpoint

        def mine(ev: DecisionEvent) -> bool:
            detail = ev.detail
            if not isinstance(detail, ExplainedDecision) or watcher.id not in detail.watchers:
                return False
            if not wanted:
                return True
            result = detail.cycle.result
            primary = result.primary if result is not None else None
            target = primary.targets[0] if primary is not None and primary.targets else None
            return target is not None and wanted in (target.key, target.hostport)

        sub = st.bus.subscribe(maxsize=WATCH_BUFFER, predicate=mine)
        sent = 0
        try:
            while True:
                ev = await sub.get()
                detail: ExplainedDecision = ev.detail
                decision = to_proto(detail.cycle, st.datastore, max_fallbacks=st.max_fallbacks, dry_run=False)
                decision.unix_nanos = int(ev.time * 1e9)
                decision.scheduling_seconds = ev.decision_s
                yield pb.WatchDecisionsResponse(decision=decision, dropped=sub.dropped)
                sent += 1
                if request.max_decisions and sent >= request.max_decisions:
                    return
        finally:
            st.bus.unsubscribe(sub)
            st.explainer.remove_watcher(watcher)

    # --- GetPool ------------------------------------------------------------------------------
    async def GetPool(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.pool_snapshot()

    def pool_snapshot(self) -> Any:
        st = self.state
        ds = st.datastore
        now = time.monotonic()
        total_rate, per_endpoint_rate = st.stats.rates(now)
        snap = pb.PoolSnapshot(unix_nanos=time.time_ns(), config_source=st.config_source)
        if ds.pool is not None:
            snap.pool_name, snap.pool_namespace = ds.pool.name, ds.pool.namespace
        for ep in ds.endpoints():
            m = ep.metrics
            counters = st.stats.per_endpoint.get(ep.key)
            snap.endpoints.add(
                key=ep.key, hostport=ep.hostport, role=str(ep.role), healthy=ep.healthy,
                labels=ep.labels,
                metrics=pb.EndpointMetrics(
                    waiting_queue_size=m.waiting_queue_size, running_requests=m.running_requests,
                    kv_cache_usage=m.kv_cache_usage, active_loras=sorted(m.active_loras),
                    waiting_loras=sorted(m.waiting_loras), max_loras=m.max_loras,
                    block_size=m.block_size, num_gpu_blocks=m.num_gpu_blocks),
                metrics_age_seconds=now - m.updated_at if m.updated_at > 0 else -1.0,
                inflight=ep.inflight, inflight_tokens=ep.inflight_tokens,
                peer_inflight=ep.peer_inflight, peer_inflight_tokens=ep.peer_inflight_tokens,
                decisions_total=counters.decisions if counters is not None else 0,
                decisions_per_second=per_endpoint_rate.get(ep.key, 0.0),
                prefix_hit_rate=counters.hit_rate() if counters is not None else -1.0)
        snap.decisions.total = st.stats.total
        snap.decisions.per_second = total_rate
        snap.decisions.prefix_hit_rate = st.stats.hit_rate()
        snap.decisions.errors = st.stats.errors
        for source, ep, blocks, capacity in index_coverage(st.scheduler(), st.services, ds.endpoints()):
            snap.index_coverage.add(source=source, endpoint=ep.key, blocks=blocks, capacity=capacity)
        return snap


def index_coverage(scheduler: Any, services: dict[str, Any], endpoints: tuple[Endpoint, ...]
                   ) -> list[tuple[str, Endpoint, int, int]]:
    """(source, endpoint, blocks remembered, capacity) for every prefix index the EPP keeps:
    each approximate prefix-cache-scorer's per-endpoint LRU, and the KV-event block index."""
    out: list[tuple[str, Endpoint, int, int]] = []
    seen: set[int] = set()
    for profile in getattr(scheduler, "profiles", {}).values():
        for scorer, _ in profile.scorers:
            cached_blocks = getattr(scorer, "cached_blocks", None)
            if id(scorer) in seen or not callable(cached_blocks):
                continue
            seen.add(id(scorer))
            params = getattr(scorer, "params", None)
            lru = int(getattr(params, "lru_capacity_per_server", 0))
            auto = bool(getattr(params, "auto_tune", False))
            for ep in endpoints:
                capacity = ep.metrics.num_gpu_blocks if auto and ep.metrics.num_gpu_blocks > 0 else lru
                out.append((f"{scorer.type_name}/{scorer.name}", ep, int(cached_blocks(ep.key)), capacity))
    from epp.prefixcache.runtime import SERVICE_KEY

    runtime = services.get(SERVICE_KEY)
    if runtime is not None:
        index = runtime.index
        blocks_of = getattr(index, "blocks_of", None)
        for ep in endpoints:
            # -1 e.g. for the Redis index: counting would scan the shared keyspace.
            blocks = (sum(int(blocks_of(k)) for k in runtime.manager.index_keys(ep.key))
                      if callable(blocks_of) else -1)
            out.append(("kv-events", ep, blocks, ep.metrics.num_gpu_blocks))
    return out


def _eligible(datastore: Datastore, subset: frozenset[str] | None) -> list[Endpoint]:
    """The endpoints ExtProcHandler._eligible hands the scheduler."""
    endpoints = datastore.healthy_endpoints()
    return [e for e in endpoints if subset is None or e.hostport in subset]


def _no_endpoint_message(datastore: Datastore, subset: frozenset[str] | None) -> str:
    if subset is not None:
        return "none of the endpoints in the subset hint is available"
    if not datastore.endpoints():
        return "the inference pool has no endpoints"
    return "no healthy endpoint in the inference pool"


def _refused(request_id: str, message: str, status: int, llm: LLMRequest | None = None) -> Any:
    if llm is None:
        llm = LLMRequest(request_id=request_id, model="", target_model="")
    cycle = TracedCycle(llm, CycleState())
    return to_proto(cycle, Datastore(), max_fallbacks=0, dry_run=True, error=message, error_status=status)
