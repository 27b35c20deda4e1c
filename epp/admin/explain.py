"""Explain a scheduling decision: every filter, scorer and picker step, per profile.

`schedule_traced` is the scheduler's cycle (epp/scheduling/scheduler.py `Scheduler.schedule`)
run through `SchedulerProfile.run_traced`, so it decides exactly as the real scheduler and
also says why. Two uses:

- Explain (the admin API): a DRY RUN on the current state. Nothing is dispatched and
  nothing changes: no in-flight charge, no PreRequest hook (so no prefix-index insert), no
  P/D decision counters, no plugin-timing samples, and the pickers' random generators and
  the KV index's lookup counters are put back as they were, so the next real decision makes
  the same random tie-break the dry run showed.
- Sampled live decisions (WatchDecisions, the x-epp-explain debug header): the server makes
  the REAL decision through this path, then commits it as usual (pre_request, dispatch), so
  the detail is the decision itself, not a re-run after the fact.
"""

from __future__ import annotations

import copy
import heapq
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.scheduling.interfaces import Filter, ProfileHandler
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.trace import ProfileTrace
from epp.scheduling.types import (
    CACHED_TOKENS_SUFFIX,
    CycleState,
    LLMRequest,
    ProfileRunResult,
    SchedulingError,
    SchedulingResult,
)

PREFILLER_HEADER = "x-prefiller-host-port"


@dataclass(slots=True)
class TracedCycle:
    """One scheduling cycle with its traces; `error` set when nothing can serve the request."""

    request: LLMRequest
    state: CycleState
    traces: list[ProfileTrace] = field(default_factory=list)
    result: SchedulingResult | None = None
    error: SchedulingError | None = None
    handler: ProfileHandler | None = None
    seconds: float = 0.0


def schedule_traced(scheduler: Scheduler, request: LLMRequest, endpoints: Sequence[Endpoint],
                    *, dry_run: bool) -> TracedCycle:
    """Scheduler.schedule, step by step. Never raises SchedulingError: it lands in `error`."""
    t0 = time.perf_counter()
    cycle = TracedCycle(request, CycleState())
    with _isolated(scheduler, dry_run) as handler:
        cycle.handler = handler
        try:
            cycle.result = _cycle(scheduler, handler, request, endpoints, cycle)
        except SchedulingError as e:
            cycle.error = e
    cycle.seconds = time.perf_counter() - t0
    return cycle


def _cycle(scheduler: Scheduler, handler: ProfileHandler, request: LLMRequest,
           endpoints: Sequence[Endpoint], cycle: TracedCycle) -> SchedulingResult:
    candidates = request.candidates
    if candidates is not None:
        endpoints = [ep for ep in endpoints if ep.hostport in candidates]
        if not endpoints:
            raise SchedulingError(
                f"request {request.request_id}: none of the {len(candidates)} endpoints of "
                "the subset hint is a ready endpoint of the pool")
    elif not endpoints:
        raise SchedulingError(f"request {request.request_id}: the pool has no ready endpoints")
    state = cycle.state
    profiles = scheduler.profiles
    results: dict[str, ProfileRunResult | None] = {}
    for _ in range(len(profiles) + 1):  # Scheduler's bound on handler rounds
        ran = False
        for name, profile in handler.pick_profiles(state, request, profiles, results).items():
            if name in results:
                continue
            trace = ProfileTrace(name)
            cycle.traces.append(trace)
            results[name] = profile.run_traced(state, request, endpoints, trace)
            ran = True
        if not ran:
            break
    result = handler.process_results(state, request, results)
    primary = result.primary
    if primary is None or not primary.targets:
        raise SchedulingError(
            f"request {request.request_id}: no endpoint passed the filters of scheduling "
            f"profile {result.primary_profile!r}")
    return result


@contextmanager
def _isolated(scheduler: Scheduler, dry_run: bool) -> Iterator[ProfileHandler]:
    """For a dry run: the profile handler without its counters, and the random state of the
    pickers and the KV index's lookup counters restored afterwards."""
    handler = scheduler.profile_handler
    if not dry_run:
        yield handler
        return
    rngs: list[tuple[random.Random, object]] = []
    for profile in scheduler.profiles.values():
        rng = getattr(profile.picker, "rng", None)
        if isinstance(rng, random.Random):
            rngs.append((rng, rng.getstate()))
    if hasattr(handler, "metrics"):
        # The P/D handler counts decisions in a PDMetrics; a dry run counts into a private one.
        from epp.scheduling.plugins.pd_metrics import PDMetrics

        if isinstance(handler.metrics, PDMetrics):
            handler = copy.copy(handler)
            handler.metrics = PDMetrics()
    index_stats = _index_stats(scheduler)
    saved = [(s, s.lookups, s.lookup_hits) for s in index_stats]
    try:
        yield handler
    finally:
        for rng, st in rngs:
            rng.setstate(st)  # type: ignore[arg-type]
        for s, lookups, hits in saved:
            s.lookups, s.lookup_hits = lookups, hits


def _index_stats(scheduler: Scheduler) -> list[Any]:
    out: list[Any] = []
    for profile in scheduler.profiles.values():
        for scorer, _ in profile.scorers:
            runtime = getattr(scorer, "runtime", None)
            stats = getattr(getattr(runtime, "index", None), "stats", None)
            if stats is not None and hasattr(stats, "lookups") and all(stats is not s for s in out):
                out.append(stats)
    return out


# --- what the handler would send -----------------------------------------------------------

def fallbacks(result: SchedulingResult, datastore: Datastore, max_fallbacks: int) -> list[Endpoint]:
    """The destination and its fallbacks, as ExtProcHandler._schedule orders them."""
    primary = result.primary
    if primary is None or not primary.targets:
        return []
    targets = primary.targets[: 1 + max_fallbacks]
    if len(targets) == 1 and max_fallbacks > 0 and len(primary.scores) > 1:
        out = [targets[0]]
        scores = primary.scores
        for key in heapq.nlargest(max_fallbacks + 1, scores, key=scores.__getitem__):
            if key != targets[0].key:
                ep = datastore.get(key)
                if ep is not None and len(out) <= max_fallbacks:
                    out.append(ep)
        return out
    return list(targets)


# --- per-endpoint details --------------------------------------------------------------------

def prefix_matches(state: CycleState) -> dict[str, tuple[int, int, int]]:
    """endpoint key -> (matched blocks, prompt blocks, cached tokens), from whatever prefix
    scorers ran in the cycle (their cycle states carry `hashes` and `matched_blocks`, and
    "<name>.cached-tokens" maps endpoint keys to tokens: the contract pd-profile-handler reads)."""
    out: dict[str, tuple[int, int, int]] = {}
    for key, value in state.items():
        hashes = getattr(value, "hashes", None)
        matched = getattr(value, "matched_blocks", None)
        if isinstance(hashes, list) and isinstance(matched, Mapping):
            total = len(hashes)
            for ep_key, blocks in matched.items():
                prev = out.get(ep_key, (0, total, 0))
                if blocks >= prev[0]:
                    out[ep_key] = (int(blocks), total, prev[2])
        elif key.endswith(CACHED_TOKENS_SUFFIX) and isinstance(value, Mapping):
            for ep_key, tokens in value.items():
                prev = out.get(ep_key, (0, 0, 0))
                out[ep_key] = (prev[0], prev[1], max(prev[2], int(tokens)))
    return out


def drop_reason(flt: Filter, ep: Endpoint) -> str:
    """Why `flt` removed `ep`. A filter may say so itself (`explain_drop(endpoint) -> str`);
    the built-in filters' rules are spelled out here; anything else names the filter."""
    explain = getattr(flt, "explain_drop", None)
    if callable(explain):
        return str(explain(ep))
    params: Any = getattr(flt, "params", None)
    label = getattr(flt, "label", None)
    if flt.type_name == "low-queue-filter" and params is not None:
        return f"waiting queue {ep.metrics.waiting_queue_size} > threshold {params.threshold}"
    if flt.type_name == "subset-filter":
        return "not in the request's subset hint"
    if isinstance(label, str):
        value = ep.labels.get(label)
        allowed = sorted(getattr(flt, "valid_values", ()))
        return f"label {label}={value if value is not None else '<unset>'} not in {allowed}"
    return f"not kept by {flt.type_name}"


def ties(trace: ProfileTrace) -> int:
    """How many survivors share the best total (more than one: a random tie-break chose)."""
    if not trace.totals:
        return 0
    best = max(trace.totals)
    return sum(1 for t in trace.totals if t == best)


def pd_decision(cycle: TracedCycle) -> dict[str, Any] | None:
    """The P/D handler's decision (prompt/cached tokens, remote or local prefill and why)."""
    handler = cycle.handler
    key = getattr(handler, "decision_key", None)
    if handler is None or not isinstance(key, str):
        return None
    decision = cycle.state.get(key)
    result = cycle.result
    headers = result.headers if result is not None else {}
    primary = result.primary if result is not None else None
    out: dict[str, Any] = {
        "remote_prefill": PREFILLER_HEADER in headers,
        "prefill_endpoint": headers.get(PREFILLER_HEADER, ""),
        "decode_endpoint": primary.targets[0].hostport if primary is not None and primary.targets else "",
        "threshold_tokens": int(getattr(handler, "threshold_tokens", 0)),
        "prompt_tokens": 0, "cached_tokens": 0, "reason": "",
    }
    if decision is not None:
        out["prompt_tokens"] = int(decision.prompt_tokens)
        out["cached_tokens"] = int(decision.cached_tokens)
        out["reason"] = "" if out["remote_prefill"] else str(decision.skip_reason)
    elif cycle.error is not None:
        out["reason"] = "no decode endpoint"
    return out
