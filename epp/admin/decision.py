"""A traced scheduling cycle as the admin API's `epp.v1.Decision`, and its one-line summary."""

from __future__ import annotations

import time
from typing import Any

from epp.admin.explain import TracedCycle, drop_reason, fallbacks, pd_decision, prefix_matches, ties
from epp.admin.proto import pb
from epp.datastore.datastore import Datastore


def to_proto(cycle: TracedCycle, datastore: Datastore, *, max_fallbacks: int, dry_run: bool,
             error: str = "", error_status: int = 0) -> Any:
    """Build the Decision message (`error` overrides the cycle's own, e.g. a request the
    server refused before scheduling)."""
    request = cycle.request
    d = pb.Decision(
        request_id=request.request_id, model=request.model, target_model=request.target_model,
        unix_nanos=time.time_ns(), dry_run=dry_run, scheduling_seconds=cycle.seconds,
        prompt_chars=len(request.prompt_text()))
    result = cycle.result
    if error:
        d.error, d.error_status = error, error_status
    elif cycle.error is not None:
        d.error, d.error_status = str(cycle.error), cycle.error.status
    elif result is not None:
        d.primary_profile = result.primary_profile
        targets = fallbacks(result, datastore, max_fallbacks)
        if targets:
            d.target, d.target_hostport = targets[0].key, targets[0].hostport
            d.fallbacks.extend(ep.hostport for ep in targets[1:])
        d.upstream_headers.update(result.headers)
    prefix = prefix_matches(cycle.state)
    for trace in cycle.traces:
        p = d.profiles.add(name=trace.name, empty_reason=trace.empty_reason, ties=ties(trace))
        p.candidates.extend(ep.key for ep in trace.candidates)
        for fstep in trace.filters:
            for ep in fstep.dropped:
                p.dropped.add(endpoint=ep.key, filter=fstep.filter.name, filter_type=fstep.filter.type_name,
                              reason=drop_reason(fstep.filter, ep))
        for i, ep in enumerate(trace.survivors):
            e = p.endpoints.add(endpoint=ep.key, hostport=ep.hostport,
                                total=trace.totals[i] if i < len(trace.totals) else 0.0)
            blocks, total, tokens = prefix.get(ep.key, (0, 0, 0))
            e.prefix_match_blocks, e.prefix_total_blocks, e.prefix_cached_tokens = blocks, total, tokens
            for step in trace.scorers:
                raw = step.scores[i]
                e.scores.add(scorer=step.scorer.name, scorer_type=step.scorer.type_name,
                             weight=step.weight, raw=raw, weighted=raw * step.weight)
        if trace.picker is not None:
            p.picker = f"{trace.picker.name} ({trace.picker.type_name})"
        if trace.result is not None:
            p.picked.extend(ep.key for ep in trace.result.targets)
    pd = pd_decision(cycle)
    if pd is not None:
        d.pd.applicable = True
        for k, v in pd.items():
            setattr(d.pd, k, v)
    return d


def summary(decision: Any) -> str:
    """One header-safe line: destination, profile, best scores, prefix match, P/D verdict.

    e.g. `pod=default/pod-1 profile=default total=1.83 prefix=12/16 alt=default/pod-0:1.20`
    (ASCII only, no newlines: it goes into an HTTP response header)."""
    if decision.error:
        return _ascii(f"error={decision.error_status} {decision.error}")[:512]
    parts = [f"pod={decision.target}", f"profile={decision.primary_profile}"]
    for p in decision.profiles:
        if p.name != decision.primary_profile:
            continue
        ranked = sorted(p.endpoints, key=lambda e: e.total, reverse=True)
        for e in ranked:
            if e.endpoint == decision.target:
                parts.append(f"total={e.total:.3g}")
                if e.prefix_total_blocks:
                    parts.append(f"prefix={e.prefix_match_blocks}/{e.prefix_total_blocks}")
                parts.append("scores=" + ",".join(f"{s.scorer}:{s.weighted:.3g}" for s in e.scores))
        alts = [f"{e.endpoint}:{e.total:.3g}" for e in ranked if e.endpoint != decision.target][:2]
        if alts:
            parts.append("alt=" + ",".join(alts))
        if p.dropped:
            parts.append(f"filtered={len(p.dropped)}")
    if decision.pd.applicable:
        pd = decision.pd
        parts.append(f"pd={'remote:' + pd.prefill_endpoint if pd.remote_prefill else 'local:' + pd.reason}")
    return _ascii(" ".join(parts))[:1024]


def _ascii(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)
