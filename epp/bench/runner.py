"""The routing benchmark: the same workload phases through every router, fresh pods each time.

For each phase (a workload at one request rate) and each router: start fresh simulated pods
and the router, scrape the pods' prefix-cache counters, send the phase open-loop, scrape
again, stop everything. Latencies are converted from wall seconds to model seconds (divided
by the simulator's time scale) so the numbers read as if the pods ran at real speed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from epp.bench.aggregate import aggregate_runs
from epp.bench.client import PhaseResult, run_phase
from epp.bench.hitrate import best_hit_rate
from epp.bench.routers import RouterSpec, RowSettings, running_router, unavailable_reason
from epp.bench.stats import Distribution
from epp.bench.workloads import Workload, WorkloadParams, build, pod_profile
from epp.localstack.stack import StackError

log = logging.getLogger("epp.bench")


@dataclass(slots=True, frozen=True)
class PhasePlan:
    workload: str
    params: WorkloadParams
    routers: tuple[str, ...] = ()  # router keys that run this phase; empty = every router of the plan

    @property
    def key(self) -> str:
        return f"{self.workload}@{self.params.rate:g}"


@dataclass(slots=True)
class BenchPlan:
    phases: list[PhasePlan]
    routers: list[RouterSpec]
    row: RowSettings
    drain_s: float = 30.0  # wall seconds allowed after the last arrival
    repeats: int = 1  # runs per (phase, router); the report gives the median and the min-max

    def routers_of(self, phase: PhasePlan) -> list[RouterSpec]:
        if not phase.routers:
            return list(self.routers)
        return [r for r in self.routers if r.key in phase.routers]

    def cells(self) -> int:
        """(phase, router, run) triples this plan runs."""
        return sum(len(self.routers_of(p)) for p in self.phases) * self.repeats


@dataclass(slots=True)
class RouterPhaseResult:
    router: str
    label: str
    ours: bool
    workload: str
    rate: float  # offered, model requests/s
    sent: int = 0
    ok: int = 0
    errors: int = 0
    ttft: Distribution = field(default_factory=lambda: Distribution.of([]))
    itl: Distribution = field(default_factory=lambda: Distribution.of([]))
    e2e: Distribution = field(default_factory=lambda: Distribution.of([]))
    output_tokens_per_s: float = math.nan  # model seconds
    prefix_hit_rate: float = math.nan  # from the pods' vllm:prefix_cache_hits / queries
    pod_share_max: float = math.nan  # busiest pod's share of the requests (1/pods is even)
    error_examples: list[str] = field(default_factory=list)
    router_warnings: list[str] = field(default_factory=list)  # distinct warnings from the router's log
    skipped: str = ""  # why the router did not run
    repeat: int = 0  # which run (0-based) of a single sample; aggregated rows keep 0
    runs: int = 1  # samples behind an aggregated row
    # Aggregated rows: "metric" -> [min, max] over the runs (metric as in spread_value()).
    spread: dict[str, list[float]] = field(default_factory=dict)


@dataclass(slots=True)
class PhaseOutcome:
    plan: PhasePlan
    title: str
    requests: int
    mean_prompt_tokens: float
    best_hit_rate: float
    rows: list[RouterPhaseResult] = field(default_factory=list)  # one per router: the median of its runs
    samples: list[RouterPhaseResult] = field(default_factory=list)  # every run of every router


def parse_prefix_counters(metrics_text: str) -> tuple[float, float]:
    """(hits, queries) summed over every series of vllm:prefix_cache_{hits,queries}."""
    hits = queries = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith("vllm:prefix_cache_"):
            continue
        name, _, value = line.rpartition(" ")
        metric = name.split("{", 1)[0]
        if metric.endswith("_created"):
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if metric in ("vllm:prefix_cache_hits", "vllm:prefix_cache_hits_total"):
            hits += number
        elif metric in ("vllm:prefix_cache_queries", "vllm:prefix_cache_queries_total"):
            queries += number
    return hits, queries


def scrape_prefix_counters(pod_urls: Sequence[str]) -> tuple[float, float]:
    hits = queries = 0.0
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        for url in pod_urls:
            h, q = parse_prefix_counters(client.get(f"{url}/metrics").text)
            hits += h
            queries += q
    return hits, queries


def summarize(spec: RouterSpec, plan: PhasePlan, phase: PhaseResult, time_scale: float,
              hit_rate: float, pods: int) -> RouterPhaseResult:
    to_model = 1.0 / time_scale
    ok = [r for r in phase.results if r.ok]
    sent = sum(1 for r in phase.results if r.sent)
    errors = [r for r in phase.results if not r.ok]
    shares = Counter(r.pod for r in ok if r.pod)
    tokens = sum(r.output_tokens for r in ok)
    model_wall = phase.wall_s * to_model
    examples = sorted({r.error for r in errors})[:3]
    return RouterPhaseResult(
        router=spec.key, label=spec.label, ours=spec.ours, workload=plan.workload, rate=plan.params.rate,
        sent=sent, ok=len(ok), errors=len(errors),
        ttft=Distribution.of([r.ttft_s for r in ok]).scaled(to_model),
        itl=Distribution.of([g for r in ok for g in r.token_gaps_s]).scaled(to_model),
        e2e=Distribution.of([r.e2e_s for r in ok]).scaled(to_model),
        output_tokens_per_s=tokens / model_wall if model_wall > 0 else math.nan,
        prefix_hit_rate=hit_rate,
        pod_share_max=max(shares.values()) / len(ok) if ok and shares else math.nan,
        error_examples=examples,
    )


def run_router_phase(spec: RouterSpec, plan: PhasePlan, workload: Workload, bench: BenchPlan,
                     tag: str) -> RouterPhaseResult:
    row = bench.row
    slow = pod_profile(plan.workload)
    if slow:
        row = dataclasses.replace(row, pod_slowdown=slow)
    with running_router(spec, row, tag) as router:
        hits0, queries0 = scrape_prefix_counters(router.pod_urls)
        deadline = workload.span_s * row.time_scale + bench.drain_s
        phase = asyncio.run(run_phase(router.url, workload, row.time_scale, deadline))
        # Let the pods count the last requests (counters move at admission; cheap insurance).
        time.sleep(0.1)
        hits1, queries1 = scrape_prefix_counters(router.pod_urls)
        warnings = [w for path in router.logs.values() for w in log_warnings(path)]
    queries = queries1 - queries0
    hit_rate = (hits1 - hits0) / queries if queries > 0 else math.nan
    result = summarize(spec, plan, phase, row.time_scale, hit_rate, row.pods)
    result.router_warnings = warnings
    return result


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LEVEL = re.compile(r"\b(WARN|WARNING|ERROR)\b")


def log_warnings(path: Path, limit: int = 3) -> list[str]:
    """Distinct warning/error messages of a peer router's log (timestamps stripped), with counts."""
    counts: Counter[str] = Counter()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    for raw in text.splitlines():
        line = _ANSI.sub("", raw)
        match = _LEVEL.search(line)
        if match is None:
            continue
        message = line[match.start():].split(": ")[-1].strip()
        counts[f"{match.group(1)} {message}"[:160]] += 1
    return [f"{message} (x{n})" for message, n in counts.most_common(limit)]


def _run_with_one_retry(spec: RouterSpec, plan: PhasePlan, workload: Workload, bench: BenchPlan, tag: str,
                        progress: Callable[[str], None]) -> RouterPhaseResult:
    """One retry when the stack fails to start (e.g. a free port taken meanwhile by another
    process); any other failure, or a second one, becomes a 'failed' row."""
    for attempt in (1, 2):
        try:
            return run_router_phase(spec, plan, workload, bench, f"{tag}-try{attempt}" if attempt > 1 else tag)
        except StackError as e:
            if attempt == 1:
                progress(f"   {spec.label}: could not start ({str(e).splitlines()[0][:160]}); retrying once")
                continue
            error: Exception = e
        except Exception as e:  # one broken router must not void the whole run
            error = e
        log.error("router %s failed in phase %s: %s", spec.key, plan.key, error, exc_info=error)
        break
    return RouterPhaseResult(spec.key, spec.label, spec.ours, plan.workload, plan.params.rate,
                             skipped=f"failed: {type(error).__name__}: {str(error)[:200]}")


def phase_workload(plan: PhasePlan, repeat: int) -> Workload:
    """The workload of one run of a phase: run r uses seed+r (and its own nonce), so the
    spread over runs covers the arrival process too, not only machine noise."""
    params = dataclasses.replace(plan.params, seed=plan.params.seed + repeat,
                                 nonce=f"{plan.params.nonce}-r{repeat}")
    return build(plan.workload, params)


@dataclass(slots=True)
class _PhaseRuns:
    """What the runs of one phase measured so far."""

    plan: PhasePlan
    title: str
    counts: list[float] = field(default_factory=list)
    prompts: list[float] = field(default_factory=list)
    bounds: list[float] = field(default_factory=list)
    samples: list[RouterPhaseResult] = field(default_factory=list)

    def outcome(self, routers: Sequence[RouterSpec]) -> PhaseOutcome:
        out = PhaseOutcome(self.plan, self.title, round(statistics.median(self.counts)),
                           statistics.median(self.prompts), statistics.median(self.bounds), samples=self.samples)
        out.rows = [aggregate_runs([s for s in self.samples if s.router == spec.key]) for spec in routers]
        return out


def run_benchmark(bench: BenchPlan, progress: Callable[[str], None] = print,
                  on_phase: Callable[[list[PhaseOutcome]], None] | None = None,
                  deadline: float | None = None) -> list[PhaseOutcome]:
    """Run 1 of every phase (every router of a phase back to back, so machine noise hits them
    alike), then run 2 of every phase, and so on; each phase's rows are the per-router medians
    of its runs.

    Round by round, so that a run cut short by `deadline` (time.monotonic(); no new phase run
    starts after it) still has every phase measured at least once, rather than some phases
    three times and the rest never. `on_phase` gets the outcomes so far after each phase run
    (the CLI saves them, so even an interrupted run keeps what it measured).
    """
    runs: dict[str, _PhaseRuns] = {}
    stop = False
    for repeat in range(bench.repeats):
        for plan in bench.phases:
            if deadline is not None and time.monotonic() > deadline:
                progress(f"== time budget used up before run {repeat + 1} of {plan.key}: no further runs")
                stop = True
                break
            workload = phase_workload(plan, repeat)
            state = runs.setdefault(plan.key, _PhaseRuns(plan, workload.title))
            tokenizer = bench.row.tokenizer
            bound = best_hit_rate(workload.requests, bench.row.block_size,
                                  model_tokenizer=str(tokenizer.resolve()) if tokenizer is not None else None)
            state.counts.append(len(workload.requests))
            state.prompts.append(bound.prompt_tokens / max(1, len(workload.requests)))
            state.bounds.append(bound.rate)
            progress(f"== {workload.title} @ {plan.params.rate:g} req/s, run {repeat + 1}/{bench.repeats}: "
                     f"{len(workload.requests)} requests over {workload.span_s:.1f} model-s, mean prompt "
                     f"{state.prompts[-1]:.0f} tokens, best achievable prefix hit rate {bound.rate:.1%}")
            for spec in bench.routers_of(plan):
                reason = unavailable_reason(spec)
                if reason is not None:
                    state.samples.append(RouterPhaseResult(spec.key, spec.label, spec.ours, plan.workload,
                                                           plan.params.rate, skipped=reason, repeat=repeat))
                    if repeat == 0:
                        progress(f"   {spec.label:32s} skipped: {reason}")
                    continue
                tag = f"{plan.workload}-{plan.params.rate:g}-{spec.key}-r{repeat}"
                started = time.monotonic()
                result = _run_with_one_retry(spec, plan, workload, bench, tag, progress)
                result.repeat = repeat
                state.samples.append(result)
                progress(f"   {spec.label:32s} ok {result.ok:4d} err {result.errors:3d} "
                         f"TTFT p50 {result.ttft.p50 * 1e3:8.1f} ms p99 {result.ttft.p99 * 1e3:8.1f} ms "
                         f"hit {result.prefix_hit_rate:6.1%} ({time.monotonic() - started:.1f}s)")
            if on_phase is not None:
                on_phase(_outcomes(bench, runs))
        if stop:
            break
    return _outcomes(bench, runs)


def _outcomes(bench: BenchPlan, runs: dict[str, _PhaseRuns]) -> list[PhaseOutcome]:
    return [runs[p.key].outcome(bench.routers_of(p)) for p in bench.phases if p.key in runs]


def default_run_dir() -> Path:
    return Path(".run") / "bench"
