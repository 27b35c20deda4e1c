"""`epp bench flow`: the pool at about 2x its capacity, three priority classes and two tenants,
side by side: no flow control, our flow control (GIE defaults, then with our extensions) and
vllm-router with its queue and rate limit (issue 12's targets; docs/flow-control.md).

Per arm: fresh simulated pods and the router under test (Envoy + the EPP with API keys for two
tenants, or vllm-router).
1. Unloaded: sequential critical requests give the unloaded TTFT and (first arm only, reused by
   the others) the request time, hence the pool's capacity = pods x max-num-seqs / request time.
2. Overload: open-loop Poisson arrivals at `overload` x capacity for `model_seconds` (scaled by
   the simulator's time scale), classes critical 20% / standard 50% / sheddable 30%, the heavy
   tenant sending 4x the light one's rate. Every request is streamed (TTFT = first chunk) and
   must end with a status within a bound: anything else counts as hung or lost.
Reported: critical TTFT p99 loaded / unloaded (target <= 1.5); Jain's index of the tenants'
served / fair share counted only while both are backlogged (target >= 0.95, see
`backlogged_jain`); sent = OK + rejected with a status + evicted (in-flight requests ended by
flow control's optional eviction: a 200 whose stream is cut); where the critical latency goes
(mean wait in the EPP's queue by priority, mean wait in the pods' own queues, and per critical
request what it found on arrival: `critical_wait_causes`, with Erlang C as the reference).
`--repeat N` runs the arm list N times interleaved (seed + round) and pools the p99 per arm.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import functools
import json
import math
import os
import random
import resource
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from epp.headers import OBJECTIVE
from epp.localstack.stack import REPO, LocalStack, StackConfig, StackError, free_ports

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CLASSES = (("critical", "llama3-8b-instruct", 0.2), ("standard", "", 0.5), ("sheddable", "batch-sheddable", 0.3))
PRIORITY = {"critical": 1, "standard": 0, "sheddable": -1}  # deploy/local/objectives.yaml
TENANTS = (("heavy", "sk-bench-heavy", 4.0), ("light", "sk-bench-light", 1.0))
KEYS = "tenants:\n" + "".join(f"- {{name: {n}, keys: [{k}]}}\n" for n, k, _ in TENANTS)
EVICTED = -2  # status of a request whose 200 stream was cut by flow control's eviction
# The flow-control arms: the detector counts the EPP's own in-flight requests (exact, unlike
# scraped queue depths) with the pods' max-num-seqs as the limit, so work waits in the EPP
# rather than in vLLM's queue; the same detector filters endpoints in the profile, so a request
# dispatched into a free slot is routed to the pod that has it. {extra_plugins} and
# {extensions} are empty for the GIE-defaults arm.
FLOW_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: concurrency-detector
  parameters: {{maxConcurrency: {max_concurrency}}}
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
{extra_plugins}saturationDetector: {{pluginRef: concurrency-detector}}
flowControl:
  defaultRequestTTL: {ttl_ms}ms
  defaultPriorityBand: {{fairnessPolicyRef: round-robin-fairness-policy}}
  requestTTLByObjective: {{batch-sheddable: {shed_ttl_ms}ms}}
{extensions}schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: concurrency-detector}}
  - {{pluginRef: queue-scorer, weight: 2}}
  - {{pluginRef: kv-cache-utilization-scorer, weight: 2}}
  - {{pluginRef: max-score-picker}}
"""
RESERVE_PLUGINS = "- type: priority-holdback-policy\n  parameters: {{minCeiling: {min_ceiling}}}\n"
RESERVE_EXTENSIONS = """\
  usageLimitPolicyPluginRef: priority-holdback-policy
  enableEviction: {eviction}
  evictionDelay: 0s
  evictionVictimMaxPriority: 0
"""
PRIO_EXTENSIONS = "  forwardPriorityToPods: true\n"


@dataclass(frozen=True, slots=True)
class ArmSpec:
    key: str
    label: str


ARMS = (
    ArmSpec("none", "no flow control (today's default EPP)"),
    ArmSpec("fc-gie", "flow control, GIE defaults (static usage limit 1.0)"),
    ArmSpec("fc-reserve", "flow control + priority holdback{eviction} (extensions)"),
    # The same, but Envoy sends response bodies to the EPP only for the requests eviction may
    # end (a per-request mode_override), so critical streams skip the extra hop.
    ArmSpec("fc-reserve-override", "flow control + priority holdback{eviction}, evictable bodies only"),
    # The same, plus the objective's priority written into each forwarded body
    # (flowControl.forwardPriorityToPods) for pods run with --scheduling-policy priority.
    ArmSpec("fc-prio", "flow control + priority holdback{eviction}, evictable bodies only, pod priority"),
    ArmSpec("vllm-router", "vllm-router, queue + rate limit"),
    # The bound for any admission policy: the same arrivals with every non-critical request
    # dropped before it is sent, through flow control's dispatch (GIE defaults: each request
    # into a free slot; with critical work alone nothing waits for long). What critical TTFT
    # is left here is the engine's and the stack's, not the other classes'.
    ArmSpec("critical-only", "critical traffic alone (bound: every other request dropped unsent)"),
)


BOUND_ARM = "critical-only"
RESERVE_ARMS = ("fc-reserve", "fc-reserve-override", "fc-prio")
OVERRIDE_ARMS = ("fc-reserve-override", "fc-prio")  # only evictable response bodies via the EPP
DEFAULT_ARMS = ("none", "fc-gie", "fc-reserve", "vllm-router")  # the side-by-side set


def _envoy_modes(key: str, eviction: bool) -> dict[str, Any]:
    """Envoy's ext_proc response modes per arm: eviction ends a response by answering one of
    its chunks, so the bodies it may end must pass through the EPP."""
    if key == "fc-reserve" and eviction:
        return {"response_body_mode": "STREAMED"}  # every response body
    if key in OVERRIDE_ARMS and eviction:
        # No body by default; the EPP asks for evictable ones on their response headers.
        return {"response_body_mode": "NONE", "response_header_mode": "SEND", "mode_overrides": True}
    return {"response_body_mode": "NONE"}


@dataclass(slots=True)
class FlowBenchSettings:
    pods: int = 2
    max_num_seqs: int = 4
    max_tokens: int = 64
    model_seconds: float = 60.0
    time_scale: float = 1.0
    overload: float = 2.0
    seed: int = 1
    unloaded_requests: int = 12
    # Extra unloaded TTFT samples, cheap: each probe is closed at its first chunk (a p99 of 11
    # full requests is their maximum; with the probes it is a p99 of ~50).
    unloaded_probes: int = 40
    arms: Sequence[str] = DEFAULT_ARMS
    min_ceiling: float = 0.5  # fc-reserve: priority-holdback-policy minCeiling
    eviction: bool = True  # fc-reserve: enableEviction
    # Each arm list runs `repeat` times, interleaved (A B A B ...), the i-th round with seed
    # `seed + i`: more critical samples and no arm always measured first.
    repeat: int = 1
    run_dir: Path = field(default_factory=lambda: REPO / ".run" / "bench-flow")


@dataclass(slots=True)
class Outcome:
    cls: str
    tenant: str
    status: int  # 0: exception (lost), -1: no answer within the bound (hung), -2: evicted
    ttft: float | None  # seconds to the first chunk, whenever one came
    sent_at: float
    ended_at: float


@dataclass(slots=True)
class ArmResult:
    arm: str
    capacity_rps: float
    rate_rps: float
    unloaded_ttft_p99: float
    outcomes: list[Outcome]
    label: str = ""
    breakdown: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        sent = len(self.outcomes)
        ok = sum(1 for o in self.outcomes if o.status == 200)
        rejected = sum(1 for o in self.outcomes if o.status >= 400)
        evicted = sum(1 for o in self.outcomes if o.status == EVICTED)
        hung = sum(1 for o in self.outcomes if o.status == -1)
        lost = sent - ok - rejected - evicted - hung
        crit = [o.ttft for o in self.outcomes if o.cls == "critical" and o.status == 200 and o.ttft is not None]
        crit_p99 = _pct(crit, 0.99)
        by_class = {c: dict(Counter(o.status for o in self.outcomes if o.cls == c)) for c, _, _ in CLASSES}
        jain, counted = backlogged_jain(self.outcomes)
        return {"arm": self.arm, "label": self.label, "sent": sent, "ok": ok, "rejected": rejected,
                "evicted": evicted, "hung": hung, "lost": lost,
                "capacity_rps": self.capacity_rps, "rate_rps": self.rate_rps,
                "critical_ttft_p50_s": _pct(crit, 0.5), "critical_ttft_p99_s": crit_p99,
                "unloaded_ttft_p99_s": self.unloaded_ttft_p99,
                "critical_ttft_ratio": crit_p99 / self.unloaded_ttft_p99 if self.unloaded_ttft_p99 else None,
                "jain_backlogged": jain, "jain_backlogged_dispatches": counted,
                "jain_whole_run": jain_index(self.outcomes), "by_class": by_class,
                "breakdown": self.breakdown}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _jain(x: Sequence[float]) -> float:
    total = sum(x)
    return total * total / (len(x) * sum(v * v for v in x)) if total else float("nan")


def jain_index(outcomes: list[Outcome]) -> float:
    """Whole run (the earlier measure, kept for comparison): Jain's index of served / fair
    share, fair share being the max-min fair split of everything served given each tenant's
    demand. It mixes in the windows where only one tenant was waiting."""
    demand = Counter(o.tenant for o in outcomes)
    served = Counter(o.tenant for o in outcomes if o.status == 200)
    total = sum(served.values())
    if total == 0:
        return float("nan")
    fair: dict[str, float] = {}
    left, names = float(total), sorted(demand, key=lambda t: demand[t])
    for i, t in enumerate(names):
        share = min(float(demand[t]), left / (len(names) - i))
        fair[t] = share
        left -= share
    return _jain([served[t] / fair[t] for t in names if fair[t] > 0])


def _started(o: Outcome) -> float | None:
    """When the request left the waiting state for service (its first chunk), if it did."""
    return o.sent_at + o.ttft if o.ttft is not None and o.status in (200, EVICTED) else None


def backlogged_jain(outcomes: list[Outcome]) -> tuple[float, int]:
    """Jain's index of served share / fair share over the dispatches made while both tenants
    were backlogged (the issue's definition), and how many dispatches that counted.

    A tenant is backlogged in a class at time t when it has a request of that class waiting:
    sent and neither started (first chunk) nor refused by t. A dispatch (first chunk) of a
    request of class c counts when every other tenant was backlogged in class c at that
    moment, i.e. when the router chose between the tenants; then the fair share is equal (the
    tenants' weights are equal). Per class, because across classes the priority, not the
    tenant, decides: a heavy tenant's critical request served before the light one's
    standard request is not unfair."""
    waits: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for o in outcomes:
        start = _started(o)
        starts, ends = waits.setdefault((o.cls, o.tenant), ([], []))
        starts.append(o.sent_at)
        ends.append(start if start is not None else o.ended_at)
    for starts, ends in waits.values():
        starts.sort()
        ends.sort()
    tenants = [t for t, _, _ in TENANTS]

    def waiting(cls: str, tenant: str, t: float) -> int:
        starts, ends = waits.get((cls, tenant), ((), ()))
        return bisect.bisect_right(starts, t) - bisect.bisect_right(ends, t)

    served: Counter[str] = Counter()
    for o in outcomes:
        t = _started(o)
        if t is not None and all(waiting(o.cls, u, t) > 0 for u in tenants if u != o.tenant):
            served[o.tenant] += 1
    return _jain([float(served[t]) for t in tenants]), sum(served.values())


async def _one(client: httpx.AsyncClient, url: str, cls: str, objective: str, tenant: str, key: str,
               max_tokens: int, bound_s: float, eviction: bool = False) -> Outcome:
    headers = {"authorization": f"Bearer {key}"}
    if objective:
        headers[OBJECTIVE] = objective
    start = time.monotonic()
    ttft: float | None = None
    got = 0
    try:
        async with asyncio.timeout(bound_s):
            async with client.stream("POST", f"{url}/v1/completions", headers=headers, json={
                    "model": MODEL, "prompt": "flow bench", "max_tokens": max_tokens, "stream": True}) as r:
                got = r.status_code
                async for chunk in r.aiter_bytes():
                    if ttft is None and chunk:
                        ttft = time.monotonic() - start
                status = r.status_code
    except TimeoutError:
        status = -1
    except httpx.HTTPError:
        # A 200 stream cut after it started, where eviction is on: flow control evicted it,
        # an answer rather than a lost request (the EPP's EvictedInFlight count is reported
        # next to it as a cross-check). Anything else is lost.
        status = EVICTED if eviction and got == 200 and ttft is not None else 0
    return Outcome(cls, tenant, status, ttft, start, time.monotonic())


async def _probe_ttft(client: httpx.AsyncClient, url: str, max_tokens: int) -> float | None:
    """An unloaded critical request (the same as the loaded ones), closed at its first chunk:
    its TTFT without waiting for the rest."""
    headers = {"authorization": f"Bearer {TENANTS[1][1]}", OBJECTIVE: CLASSES[0][1]}
    start = time.monotonic()
    async with asyncio.timeout(60):
        async with client.stream("POST", f"{url}/v1/completions", headers=headers, json={
                "model": MODEL, "prompt": "flow bench", "max_tokens": max_tokens, "stream": True}) as r:
            if r.status_code != 200:
                return None
            async for chunk in r.aiter_bytes():
                if chunk:
                    return time.monotonic() - start
    return None


async def _loop_lag(samples: list[float], period: float = 0.01) -> None:
    """The load generator's own event-loop lag (how late a 10 ms sleep wakes up): when the
    host is CPU-starved, client-side TTFTs include this, not only the router's and pods' time."""
    while True:
        t = time.monotonic()
        await asyncio.sleep(period)
        samples.append(time.monotonic() - t - period)


def host_cpu_seconds(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far of the load generator (this process) and of each part of the stack,
    the pods summed: where the 2-core host's time goes during an arm."""
    from epp.bench.cpu_use import is_pod
    from epp.bench.routers import process_cpu_seconds

    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"client": usage.ru_utime + usage.ru_stime}
    for name, cpu in process_cpu_seconds(pids).items():
        part = "pods" if is_pod(name) else name
        out[part] = out.get(part, 0.0) + cpu
    return out


async def _run_arm(arm: ArmSpec, url: str, s: FlowBenchSettings, capacity: float | None,
                   eviction: bool = False, seed: int | None = None, only_critical: bool = False,
                   cpu: Callable[[], dict[str, float]] | None = None) -> ArmResult:
    rng = random.Random(s.seed if seed is None else seed)
    lag: list[float] = []
    # No cap on connections: under overload most requests wait in the EPP's queue with their
    # connection open (up to rate x TTL of them), and a capped pool would hold new critical
    # requests in the client instead (a 1,000 cap did at 16 slots, time scale 4: docs/benchmarks-flow.md).
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits, trust_env=False) as client:
        unloaded = [await _one(client, url, "critical", CLASSES[0][1], "light", TENANTS[1][1], s.max_tokens, 60)
                    for _ in range(s.unloaded_requests + 1)]
        times = [o.ended_at - o.sent_at for o in unloaded[1:] if o.status == 200]  # the first warms up
        ttfts = [o.ttft for o in unloaded[1:] if o.status == 200 and o.ttft is not None]
        for _ in range(s.unloaded_probes):
            ttft = await _probe_ttft(client, url, s.max_tokens)
            if ttft is not None:
                ttfts.append(ttft)
            await asyncio.sleep(0.05)  # the pod notices the closed stream and frees its slot
        if not times or not ttfts:
            raise RuntimeError(f"{arm.key}: unloaded requests failed: {[o.status for o in unloaded]}")
        if capacity is None:  # calibrated once, so every arm gets the same offered load
            capacity = s.pods * s.max_num_seqs / statistics.mean(times)
        rate = s.overload * capacity
        duration = s.model_seconds * s.time_scale
        bound = max(30.0, 4 * duration)
        tasks: list[asyncio.Task[Outcome]] = []
        t = time.monotonic()
        end = t + duration
        weights = [w for _, _, w in TENANTS]
        monitor = asyncio.create_task(_loop_lag(lag))
        cpu0, wall0 = (cpu() if cpu is not None else {}), time.monotonic()
        while t < end:
            cls, objective, _ = rng.choices(CLASSES, [w for _, _, w in CLASSES])[0]
            tenant, key, _ = rng.choices(TENANTS, weights)[0]
            # critical-only: the other classes are drawn all the same, so the arrivals stay those of the other arms
            if not only_critical or cls == "critical":
                tasks.append(asyncio.create_task(_one(client, url, cls, objective, tenant, key, s.max_tokens,
                                                      bound, eviction)))
            t += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, t - time.monotonic()))
        # While arrivals last: the window the critical requests are measured in (the drain
        # after it only waits out queued requests' TTLs).
        wall = time.monotonic() - wall0
        cpu1 = cpu() if cpu is not None else {}
        outcomes = list(await asyncio.gather(*tasks))
        monitor.cancel()
    result = ArmResult(arm.key, capacity, rate, _pct(ttfts, 0.99), outcomes, arm.label)
    result.breakdown["client_loop_lag"] = {"p50_s": _pct(lag, 0.5), "p99_s": _pct(lag, 0.99),
                                           "max_s": max(lag, default=float("nan"))}
    result.breakdown["unloaded_ttfts_s"] = ttfts  # pooled across rounds by `pooled`
    result.breakdown["peak_open_requests"] = peak_open(outcomes)
    if cpu1:
        # % of one core while arrivals lasted; the host has os.cpu_count() of them.
        result.breakdown["host_cpu_pct"] = {k: round(100 * max(0.0, v - cpu0.get(k, 0.0)) / wall, 1)
                                            for k, v in cpu1.items()}
    result.breakdown["critical_wait_causes"] = critical_wait_causes(
        outcomes, s.pods * s.max_num_seqs, TARGET_TTFT_RATIO * result.unloaded_ttft_p99)
    return result


def peak_open(outcomes: list[Outcome]) -> int:
    """Most requests open at once (sent, not yet ended): the connections the client held."""
    events = sorted([(o.sent_at, 1) for o in outcomes] + [(o.ended_at, -1) for o in outcomes])
    current = peak = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def critical_wait_causes(outcomes: list[Outcome], slots: int, slow_s: float) -> dict[str, Any]:
    """Why critical requests were slow, from the client's own timeline: at each critical
    request's send time, how many earlier critical requests were not done yet, and how many
    lower-priority streams were open (first chunk seen, end not yet). `overflow`: critical
    requests alone held (or were about to take) every slot of the
    pool (pods x max-num-seqs), so the request had to wait for a critical one to finish; no
    ordering, holdback or eviction can avoid that (only more slots). `evict`: every slot was
    busy but some with lower-priority work (the wait is eviction's: the victim's next chunk,
    the reset, the pod noticing); `free`: a slot was free (the time is the stack's own:
    Envoy, the EPP, the pod's step, the host). Counted over all critical requests and over the
    slow ones (TTFT > `slow_s`, 1.5x the unloaded p99)."""
    spans = sorted((o.sent_at + o.ttft, o.ended_at) for o in outcomes
                   if o.ttft is not None and o.status in (200, EVICTED) and o.cls != "critical")
    crit = sorted((o for o in outcomes if o.cls == "critical" and o.status == 200 and o.ttft is not None),
                  key=lambda o: o.sent_at)
    counts = {"overflow": 0, "evict": 0, "free": 0}
    slow = {"overflow": 0, "evict": 0, "free": 0}
    ttfts: dict[str, list[float]] = {"overflow": [], "evict": [], "free": []}
    for i, o in enumerate(crit):
        t = o.sent_at
        # Critical requests sent earlier and not done: each holds or is about to take a slot
        # (they are dispatched ahead of everything else). Lower priorities: open streams only.
        open_crit = sum(1 for c in crit[:i] if c.ended_at > t)
        end = bisect.bisect_right(spans, (t, math.inf))
        open_all = open_crit + sum(1 for _start, stop in spans[:end] if stop > t)
        cause = "overflow" if open_crit >= slots else "evict" if open_all >= slots else "free"
        counts[cause] += 1
        ttfts[cause].append(o.ttft or 0.0)
        if (o.ttft or 0.0) > slow_s:
            slow[cause] += 1
    rest = ttfts["evict"] + ttfts["free"]
    return {"slots": slots, "slow_above_s": slow_s, "all": counts, "slow": slow,
            "ttft_p50_s": {k: _pct(v, 0.5) for k, v in ttfts.items()},
            "ttft_p90_s": {k: _pct(v, 0.9) for k, v in ttfts.items()},
            "ttft_max_s": {k: max(v, default=float("nan")) for k, v in ttfts.items()},
            "p99_without_overflow_s": _pct(rest, 0.99)}


def erlang_c(servers: int, load: float) -> float:
    """Erlang C: the probability that a Poisson arrival finds all `servers` busy at offered
    `load` (Erlangs; M/M/c, an upper-side reference for the near-fixed request times here)."""
    if load >= servers:
        return 1.0
    term, total = 1.0, 1.0
    for k in range(1, servers):
        term *= load / k
        total += term
    top = term * load / servers * servers / (servers - load)
    return top / (total + top)


def pooled(results: list[ArmResult]) -> dict[str, dict[str, Any]]:
    """Per arm key (rounds of --repeat pooled): critical TTFT p50/p99 over every round's
    critical requests against the p99 of every round's unloaded samples, and the wait causes
    summed; with Erlang C's chance that critical work alone fills the pool."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        key = r.arm.split("#")[0]
        agg = out.setdefault(key, {"rounds": 0, "crit": [], "unloaded": [], "slow": Counter(), "all": Counter(),
                                   "crit_busy_s": 0.0, "span_s": 0.0, "slots": 0})
        agg["rounds"] += 1
        agg["crit"] += [o.ttft for o in r.outcomes if o.cls == "critical" and o.status == 200 and o.ttft is not None]
        agg["unloaded"] += r.breakdown.get("unloaded_ttfts_s", [r.unloaded_ttft_p99])
        causes = r.breakdown.get("critical_wait_causes") or {}
        agg["slow"].update(causes.get("slow", {}))
        agg["all"].update(causes.get("all", {}))
        agg["slots"] = causes.get("slots", 0)
        crit_done = [o for o in r.outcomes if o.cls == "critical" and o.status == 200 and o.ttft is not None]
        agg["crit_busy_s"] += sum(o.ended_at - o.sent_at - o.ttft for o in crit_done if o.ttft is not None)
        if r.outcomes:
            agg["span_s"] += max(o.sent_at for o in r.outcomes) - min(o.sent_at for o in r.outcomes)
    for agg in out.values():
        crit, unloaded = agg.pop("crit"), agg.pop("unloaded")
        busy, span = agg.pop("crit_busy_s"), agg.pop("span_s")
        load = busy / span if span else float("nan")
        p99, u99 = _pct(crit, 0.99), _pct(unloaded, 0.99)
        agg.update({"critical": len(crit), "critical_ttft_p50_s": _pct(crit, 0.5), "critical_ttft_p99_s": p99,
                    "unloaded_samples": len(unloaded), "unloaded_ttft_p99_s": u99,
                    "critical_ttft_ratio": p99 / u99 if u99 else float("nan"),
                    "critical_load_erlangs": load,
                    "erlang_c_all_slots_busy": erlang_c(agg["slots"], load) if agg["slots"] and load == load
                    else float("nan"),
                    "slow": dict(agg["slow"]), "all": dict(agg["all"])})
    return out


def _scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """name -> labels -> value, for the histogram _sum/_count samples read below."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    try:
        text = httpx.get(url, timeout=5.0, trust_env=False).text
    except httpx.HTTPError:
        return out
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _hist(m: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, key: str | None
          ) -> dict[str, tuple[float, float, list[tuple[float, float]]]]:
    """Histogram `name` summed over every label but `key`: key value -> (sum, count, buckets)."""
    out: dict[str, tuple[float, float, list[tuple[float, float]]]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    for suffix, target in (("_sum", sums), ("_count", counts)):
        for labels, v in m.get(name + suffix, {}).items():
            k = dict(labels).get(key, "") if key else ""
            target[k] = target.get(k, 0.0) + v
    for labels, v in m.get(name + "_bucket", {}).items():
        d = dict(labels)
        k = d.get(key, "") if key else ""
        le = float(d["le"])
        buckets.setdefault(k, {})[le] = buckets.setdefault(k, {}).get(le, 0.0) + v
    for k, n in counts.items():
        out[k] = (sums.get(k, 0.0), n, sorted(buckets.get(k, {}).items()))
    return out


def _p99_bound(n: float, buckets: list[tuple[float, float]]) -> float:
    """Upper bound of the histogram's 99th percentile: the first bucket holding 99%."""
    for le, cumulative in buckets:
        if cumulative >= 0.99 * n:
            return le
    return float("inf")


def _breakdown(stack: LocalStack, time_scale: float) -> dict[str, Any]:
    """Where the waiting happened: the EPP's flow-control queue (by priority, over the
    requests that waited; the others waited 0) and the pods' own queues (vLLM's
    request_queue_time over all requests; the simulator reports model time, scaled back to
    wall time here). p99 values are histogram bucket bounds."""
    result: dict[str, Any] = {}
    if stack.cfg.with_epp:
        m = _scrape(f"http://127.0.0.1:{stack.epps[0].metrics_port}/metrics")
        h = _hist(m, "inference_extension_flow_control_request_queue_duration_seconds", "priority")
        result["epp_queue"] = {p: {"waited": int(n), "mean_s": total / n if n else 0.0,
                                   "p99_le_s": _p99_bound(n, b)} for p, (total, n, b) in sorted(h.items())}
        outcomes = m.get("inference_extension_flow_control_requests_total", {})
        result["epp_evicted_inflight"] = int(sum(v for labels, v in outcomes.items()
                                                 if dict(labels).get("outcome") == "EvictedInFlight"))
    total, n = 0.0, 0.0
    merged: dict[float, float] = {}
    for pod in stack.pods:
        h = _hist(_scrape(stack.pod_url(pod) + "/metrics"), "vllm:request_queue_time_seconds", None)
        for t, c, b in h.values():
            total, n = total + t, n + c
            for le, v in b:
                merged[le] = merged.get(le, 0.0) + v
    result["pod_queue"] = {"requests": int(n), "mean_s": total * time_scale / n if n else 0.0,
                           "p99_le_s": _p99_bound(n, sorted(merged.items())) * time_scale}
    return result


def _flow_config(arm: str, s: FlowBenchSettings) -> str:
    # TTLs in model time: 30 s for everyone, 5 s for sheddable work.
    ttl_ms, shed_ttl_ms = round(30_000 * s.time_scale), round(5_000 * s.time_scale)
    reserve = arm in RESERVE_ARMS
    extra = RESERVE_PLUGINS.format(min_ceiling=s.min_ceiling) if reserve else ""
    ext = RESERVE_EXTENSIONS.format(eviction=str(s.eviction).lower()) if reserve else ""
    if arm == "fc-prio":
        ext += PRIO_EXTENSIONS
    return FLOW_CONFIG.format(max_concurrency=s.max_num_seqs, ttl_ms=ttl_ms, shed_ttl_ms=shed_ttl_ms,
                              extra_plugins=extra, extensions=ext)


def _vllm_router_args(binary: str, stack: LocalStack, port: int, prom: int, s: FlowBenchSettings,
                      capacity: float) -> list[str]:
    """vllm-router with the same admission budget as our flow control: at most pods x
    max-num-seqs requests in flight, the rest queued (up to 1000, as long as the TTL), and its
    token-bucket rate limit refilled at the pool's calibrated capacity (requests/s)."""
    return [binary, "--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin",
            "--worker-urls", *[stack.pod_url(p) for p in stack.pods],
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(prom), "--log-level", "warning",
            "--max-concurrent-requests", str(s.pods * s.max_num_seqs), "--queue-size", "1000",
            "--queue-timeout-secs", str(max(1, round(30 * s.time_scale))),
            "--rate-limit-tokens-per-second", str(max(1, math.ceil(capacity))),
            "--disable-retries", "--disable-circuit-breaker"]


def run_flow_bench(s: FlowBenchSettings) -> list[ArmResult]:
    from epp.bench.routers import stop_process, vllm_router_binary, wait_http

    s.run_dir.mkdir(parents=True, exist_ok=True)
    keys = s.run_dir / "keys.yaml"
    keys.write_text(KEYS)
    specs = {a.key: a for a in ARMS}
    unknown = [k for k in s.arms if k not in specs]
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(specs)}")
    results: list[ArmResult] = []
    rounds = [(r, key) for r in range(max(1, s.repeat)) for key in s.arms]  # interleaved
    for rnd, key in rounds:
        arm = specs[key]
        name = key if rnd == 0 else f"{key}#{rnd + 1}"
        run_dir = s.run_dir / name
        config: Path | None = None
        if key.startswith("fc-") or key == BOUND_ARM:
            run_dir.mkdir(parents=True, exist_ok=True)
            config = run_dir / "epp-config.yaml"
            # The bound dispatches like flow control (into a free slot), with nothing else to hold back.
            config.write_text(_flow_config("fc-gie" if key == BOUND_ARM else key, s))
        router = key == "vllm-router"
        binary = vllm_router_binary() if router else None
        if router and binary is None:
            raise StackError("vllm-router not installed (pip install vllm-router==0.1.17; .ci/run installs it)")
        cfg = StackConfig(ports_free=True, run_dir=run_dir, pods=s.pods, time_scale=s.time_scale, kv_events=False,
                          epp_config=config, with_epp=not router, with_envoy=not router,
                          sim_args=["--max-num-seqs", str(s.max_num_seqs), "--log-level", "WARNING",
                                    *(["--scheduling-policy", "priority"] if key == "fc-prio" else [])],
                          epp_args=["--api-keys", str(keys), "--log-level", "warning"],
                          envoy_message_timeout_ms=600_000, **_envoy_modes(key, s.eviction))
        stack = LocalStack(cfg)
        proc: subprocess.Popen[bytes] | None = None
        try:
            stack.start(timeout=60)
            capacity = results[0].capacity_rps if results else None
            url = stack.url
            if router:
                assert binary is not None
                if capacity is None:
                    raise ValueError("the vllm-router arm reuses the capacity calibrated by an earlier arm: "
                                     "list another arm first")
                port, prom = free_ports(2)
                log = run_dir / "logs" / "vllm-router.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "wb") as out:
                    proc = subprocess.Popen(_vllm_router_args(binary, stack, port, prom, s, capacity),
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
                wait_http(f"http://127.0.0.1:{port}/health", proc, log, 60)
                url = f"http://127.0.0.1:{port}"
            label = arm.label.format(eviction=" + eviction" if s.eviction else "")
            result = asyncio.run(_run_arm(ArmSpec(name, label), url, s, capacity,
                                          eviction=key in RESERVE_ARMS and s.eviction, seed=s.seed + rnd,
                                          only_critical=key == BOUND_ARM,
                                          cpu=functools.partial(host_cpu_seconds, _stack_pids(stack, proc))))
            result.breakdown.update(_breakdown(stack, s.time_scale))
            results.append(result)
        finally:
            if proc is not None:
                stop_process(proc)
            stack.stop()
    return results


def _stack_pids(stack: LocalStack, router: subprocess.Popen[bytes] | None) -> dict[str, int]:
    pids = {name: p.pid for name, p in stack.procs.items()}
    if router is not None:
        pids["vllm-router"] = router.pid
    return pids


def _ms(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v * 1000:.0f}"


def report(results: list[ArmResult]) -> str:
    lines = ["| arm | sent | OK | rejected | evicted | hung | lost | critical TTFT p99 loaded / unloaded | "
             "Jain (both backlogged) | Jain (whole run) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r.summary()
        ratio = m["critical_ttft_ratio"]
        lines.append(f"| {m['label'] or m['arm']} | {m['sent']} | {m['ok']} | {m['rejected']} | {m['evicted']} | "
                     f"{m['hung']} | {m['lost']} | {_ms(m['critical_ttft_p99_s'])} / "
                     f"{_ms(m['unloaded_ttft_p99_s'])} ms ({ratio if ratio is not None else float('nan'):.2f}x) | "
                     f"{m['jain_backlogged']:.3f} ({m['jain_backlogged_dispatches']}) | {m['jain_whole_run']:.3f} |")
    lines.append("")
    for r in results:
        m = r.summary()
        b = m["breakdown"]
        epp = ", ".join(f"priority {p}: {v['waited']} waited, mean {_ms(v['mean_s'])} ms, "
                        f"p99 <= {_ms(v['p99_le_s'])} ms" for p, v in b.get("epp_queue", {}).items()) or "none"
        pod = b.get("pod_queue", {})
        if b.get("epp_evicted_inflight"):
            epp += f"; evicted in flight (EPP count): {b['epp_evicted_inflight']}"
        if "client_loop_lag" in b:
            lag = b["client_loop_lag"]
            epp += (f"; load generator's event-loop lag p50 {_ms(lag['p50_s'])} / p99 {_ms(lag['p99_s'])} / "
                    f"max {_ms(lag['max_s'])} ms")
        # Runs from before the connection cap was lifted did not record it: derived here.
        most_open = b["peak_open_requests"] if "peak_open_requests" in b else peak_open(r.outcomes)
        epp += f"; requests open at once (client connections) at most {most_open}"
        if b.get("host_cpu_pct"):
            cpu = b["host_cpu_pct"]
            epp += (f"; host CPU while arrivals lasted, % of a core (of {100 * (os.cpu_count() or 1)}): "
                    + ", ".join(f"{k} {v:.0f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
                    + f", total {sum(cpu.values()):.0f}")
        causes = b.get("critical_wait_causes")
        why = ""
        if causes:
            why = (f"; critical requests by what they found on arrival (all / slower than "
                   f"{_ms(causes['slow_above_s'])} ms): critical streams holding all {causes['slots']} slots "
                   f"{causes['all']['overflow']} / {causes['slow']['overflow']}, all slots busy with some "
                   f"lower-priority {causes['all']['evict']} / {causes['slow']['evict']}, a slot free "
                   f"{causes['all']['free']} / {causes['slow']['free']}; p99 without the first kind "
                   f"{_ms(causes['p99_without_overflow_s'])} ms")
            if "ttft_p90_s" in causes:
                why += (f"; TTFT of those that found a slot free p50 {_ms(causes['ttft_p50_s']['free'])} / "
                        f"p90 {_ms(causes['ttft_p90_s']['free'])} ms")
        lines.append(f"- {m['arm']}: capacity {m['capacity_rps']:.1f} req/s, offered {m['rate_rps']:.1f} req/s; "
                     f"critical TTFT p50 {_ms(m['critical_ttft_p50_s'])} ms; EPP queue: {epp}; pod queues: "
                     f"{pod.get('requests', 0)} requests, mean {_ms(pod.get('mean_s'))} ms, "
                     f"p99 <= {_ms(pod.get('p99_le_s'))} ms; "
                     f"statuses by class {m['by_class']}{why}")
    pool = pooled(results)
    if len(pool) < len(results):
        lines += ["", "Pooled over the rounds (`--repeat`, interleaved, one seed per round):", "",
                  "| arm | rounds | critical requests | critical TTFT p50 / p99 | unloaded p99 (samples) | ratio | "
                  "slow: all-critical slots / lower-priority busy / free | critical load (Erlang C: all busy) |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, p in pool.items():
            slow = p["slow"]
            lines.append(f"| {key} | {p['rounds']} | {p['critical']} | {_ms(p['critical_ttft_p50_s'])} / "
                         f"{_ms(p['critical_ttft_p99_s'])} ms | {_ms(p['unloaded_ttft_p99_s'])} ms "
                         f"({p['unloaded_samples']}) | {p['critical_ttft_ratio']:.2f}x | "
                         f"{slow.get('overflow', 0)} / {slow.get('evict', 0)} / {slow.get('free', 0)} | "
                         f"{p['critical_load_erlangs']:.2f} of {p['slots']} slots "
                         f"({100 * p['erlang_c_all_slots_busy']:.1f}%) |")
    return "\n".join(lines)


FLOW_DOC = "benchmarks-flow.md"
FLOW_START, FLOW_END = "<!-- flow:start -->", "<!-- flow:end -->"
TARGET_TTFT_RATIO, TARGET_JAIN = 1.5, 0.95


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**MISSED**"


def flow_markdown(results: list[ArmResult], s: FlowBenchSettings, command: str, note: str = "",
                  measured: tuple[str, Sequence[float]] | None = None) -> str:
    """The benchmarks.md section: setup, command, the side-by-side table, where the waiting
    happened, and each target's verdict per arm (computed, not written by hand). `measured`:
    the run's date and load average (default: now)."""
    date, load = measured or (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), os.getloadavg())
    lines = [
        "## Flow control under 2x overload (issue 12)",
        "",
        f"Measured {date} with `{command}` (load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs: the machine is shared, so "
        "latencies are noisy; rerun to compare).",
        *([note, ""] if note else [""]),
        f"{s.pods} simulated pods (`--max-num-seqs {s.max_num_seqs}`, time scale {s.time_scale:g}); capacity "
        "= pods x max-num-seqs / mean request time of unloaded requests (calibrated on the first arm, the same "
        f"offered load for all); open-loop Poisson arrivals at {s.overload:g}x capacity for {s.model_seconds:g} "
        f"model-seconds; streaming completions of {s.max_tokens} tokens; critical 20% / standard 50% / sheddable "
        "30% of the traffic (objectives of priority 1 / 0 / -1); tenants heavy and light (API keys) at 4:1. "
        "TTLs 30 model-seconds, 5 for sheddable work. Unloaded TTFT p99: "
        f"{s.unloaded_requests} sequential critical requests on the same arm before the load, plus "
        f"{s.unloaded_probes} sequential probes (the same request, closed at its first chunk). "
        "Arms: the EPP's embedded default config (legacy admission: sheddable 429 when saturated); flow control "
        "with GIE's defaults (static usage limit 1.0; concurrency-detector at max-num-seqs, also filtering "
        "in the profile; round-robin between tenants); the same with priority-holdback-policy "
        f"(minCeiling {s.min_ceiling:g}) and eviction of in-flight standard/sheddable work as soon as a higher "
        "band is blocked (`enableEviction`, `evictionDelay: 0s`, `evictionVictimMaxPriority: 0`: extensions); "
        "vllm-router `--policy round_robin --max-concurrent-requests` pods x max-num-seqs `--queue-size 1000 "
        "--queue-timeout-secs` 30 `--rate-limit-tokens-per-second` ceil(capacity). Jain: over dispatches made "
        "while both tenants had a request of the same class waiting (count in parentheses); whole run: the "
        "earlier, looser measure. Raw results (every request): the JSON next to this file in bench-results/.",
        *(["Bound (critical-only): the same arrivals through flow control with GIE's defaults, every standard and "
           "sheddable request dropped before it is sent: what perfect admission leaves of the critical "
           "p99: the engine's and the stack's share, which no queue order, holdback or eviction removes."]
          if BOUND_ARM in s.arms else []),
        "",
        report(results),
        "",
        "Targets (issue 12):",
        "",
    ]
    for r in results:
        m = r.summary()
        ratio = m["critical_ttft_ratio"]
        every = m["hung"] == 0 and m["lost"] == 0
        if r.arm.split("#")[0] == BOUND_ARM:
            lines.append(f"- {m['label']}: critical TTFT p99 {(ratio if ratio is not None else float('nan')):.2f}x "
                         "unloaded: the least any admission policy can reach on this pool (a bound, not judged).")
            continue
        lines.append(f"- {m['label']}: critical TTFT p99 <= {TARGET_TTFT_RATIO}x unloaded: "
                     f"{(ratio if ratio is not None else float('nan')):.2f}x, "
                     f"{_verdict(ratio is not None and ratio <= TARGET_TTFT_RATIO)}; Jain >= {TARGET_JAIN} while both "
                     f"backlogged: {m['jain_backlogged']:.3f}, {_verdict(m['jain_backlogged'] >= TARGET_JAIN)}; "
                     f"every request answered (0 hung, 0 lost): {m['hung']} hung, {m['lost']} lost, {_verdict(every)}.")
    return "\n".join(lines) + "\n"


def splice_flow_section(report_text: str, flow_doc: Path) -> str:
    """benchmarks.md with the last `epp bench flow` run (benchmarks-flow.md) in its marked
    section, so rerunning the routing benchmark keeps it (and the reverse)."""
    if not flow_doc.exists():
        return report_text
    section = f"{FLOW_START}\n{flow_doc.read_text().strip()}\n{FLOW_END}"
    if FLOW_START in report_text and FLOW_END in report_text:
        head, rest = report_text.split(FLOW_START, 1)
        return head + section + rest.split(FLOW_END, 1)[1]
    for marker in ("<!-- overhead:begin -->", "## EPP overhead"):
        if marker in report_text:
            head, tail = report_text.split(marker, 1)
            return f"{head}{section}\n\n{marker}{tail}"
    return f"{report_text.rstrip()}\n\n{section}\n"


def results_json(results: list[ArmResult], s: FlowBenchSettings, command: str) -> dict[str, Any]:
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()}
    settings["arms"] = list(s.arms)
    return {"command": command, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "loadavg": os.getloadavg(), "cpus": os.cpu_count(), "settings": settings,
            "arms": [r.summary() for r in results],
            "outcomes": {r.arm: [asdict(o) for o in r.outcomes] for r in results}}


def results_from_json(data: dict[str, Any]) -> tuple[list[ArmResult], FlowBenchSettings]:
    """Rebuild a run from its raw JSON (results_json), e.g. to re-render the markdown."""
    raw = dict(data["settings"])
    raw["run_dir"] = Path(raw["run_dir"])
    raw["arms"] = tuple(raw["arms"])
    raw.setdefault("unloaded_probes", 0)  # runs from before the probes existed
    s = FlowBenchSettings(**raw)
    results = [ArmResult(a["arm"], a["capacity_rps"], a["rate_rps"], a["unloaded_ttft_p99_s"],
                         [Outcome(**o) for o in data["outcomes"][a["arm"]]], a["label"], a["breakdown"])
               for a in data["arms"]]
    for r in results:  # derived from the outcomes: runs from before a field was added get it too
        r.breakdown["critical_wait_causes"] = critical_wait_causes(
            r.outcomes, s.pods * s.max_num_seqs, TARGET_TTFT_RATIO * r.unloaded_ttft_p99)
    return results, s


def add_flow_parser(bench_sub: Any) -> None:
    f = bench_sub.add_parser("flow", help="2x overload, three priorities, two tenants: no flow control, our "
                                          "flow control and vllm-router's queue (issue: flow control)",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--quick", action="store_true", default=argparse.SUPPRESS,
                   help="10 model-seconds instead of 60")
    f.add_argument("--model-seconds", type=float, default=None)
    f.add_argument("--time-scale", type=float, default=argparse.SUPPRESS,
                   help="simulator speed (default 1.0: below that the host's CPU saturates before the pool)")
    f.add_argument("--arms", default=None,
                   help=f"comma-separated, in order (default {','.join(DEFAULT_ARMS)}): "
                        f"{', '.join(a.key for a in ARMS)}")
    f.add_argument("--min-ceiling", type=float, default=None,
                   help="fc-reserve: priority-holdback-policy minCeiling (default 0.5)")
    f.add_argument("--no-eviction", action="store_true", default=False,
                   help="fc-reserve without enableEviction")
    f.add_argument("--unloaded-requests", type=int, default=None,
                   help="sequential requests measuring the unloaded TTFT and capacity (default 12)")
    f.add_argument("--unloaded-probes", type=int, default=None,
                   help="extra unloaded TTFT samples, each closed at its first chunk (default 40)")
    f.add_argument("--repeat", type=int, default=None,
                   help="run the arm list this many times, interleaved, round i with seed+i (default 1); "
                        "the report adds the rounds pooled per arm")
    f.add_argument("--seed", type=int, default=None, help="arrival seed of the first round (default 1)")
    f.add_argument("--max-num-seqs", type=int, default=None, help="each pod's batch slots (default 4)")
    f.add_argument("--json", type=Path, default=None, help="write the raw results (every request) here")
    f.add_argument("--out", type=Path, default=None,
                   help=f"write the markdown section to OUT/{FLOW_DOC} and splice it into OUT/benchmarks.md")
    f.add_argument("--from-json", type=Path, default=None,
                   help="do not run: re-render the report (and --out) from a --json file of an earlier run")
    f.add_argument("--note", default="", help="a sentence added to the markdown section (e.g. machine state)")
    f.add_argument("--run-dir", type=Path, default=argparse.SUPPRESS)
    f.set_defaults(func=run_flow_only)


def run_flow_only(args: argparse.Namespace) -> int:
    import sys

    s = FlowBenchSettings()
    if getattr(args, "quick", False):
        s.model_seconds = 10.0
    if args.model_seconds is not None:
        s.model_seconds = args.model_seconds
    if getattr(args, "time_scale", None):
        s.time_scale = args.time_scale
    if getattr(args, "run_dir", None) is not None:
        s.run_dir = Path(args.run_dir) / "flow"
    if args.arms:
        s.arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    if args.unloaded_requests is not None:
        s.unloaded_requests = args.unloaded_requests
    if args.unloaded_probes is not None:
        s.unloaded_probes = args.unloaded_probes
    if args.min_ceiling is not None:
        s.min_ceiling = args.min_ceiling
    if args.repeat is not None:
        if args.repeat < 1:
            raise SystemExit("--repeat must be >= 1")
        s.repeat = args.repeat
    if args.seed is not None:
        s.seed = args.seed
    if args.max_num_seqs is not None:
        s.max_num_seqs = args.max_num_seqs
    s.eviction = not args.no_eviction
    command = "python -m epp " + " ".join(sys.argv[1:])
    measured: tuple[str, Sequence[float]] | None = None
    if args.from_json is not None:
        data = json.loads(args.from_json.read_text())
        results, s = results_from_json(data)
        command, measured = data["command"], (data["date_utc"], data["loadavg"])
    else:
        results = run_flow_bench(s)
    print(report(results), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results_json(results, s, command), indent=1, default=float) + "\n")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / FLOW_DOC).write_text(flow_markdown(results, s, command, args.note, measured))
        bench_md = args.out / "benchmarks.md"
        if bench_md.exists():
            bench_md.write_text(splice_flow_section(bench_md.read_text(), args.out / FLOW_DOC))
    return 0
