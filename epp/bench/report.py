"""docs/benchmarks.md and the docs/bench-*.png plots.

The overhead section sits between markers so `python -m epp bench overhead` can replace it
in an existing report without rerunning the routing benchmark.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

from epp.bench.aggregate import spread_value
from epp.bench.machine import MachineFacts
from epp.bench.overhead import OverheadResult
from epp.bench.runner import PhaseOutcome, RouterPhaseResult
from epp.bench.stats import ratio

OVERHEAD_BEGIN = "<!-- overhead:begin -->"
OVERHEAD_END = "<!-- overhead:end -->"
# The targets of issue 10 ("Never worse than round robin"), judged on the embedded default config.
DEFAULT_EPP_KEY = "epp-default"
BASELINE_KEYS = ("envoy-rr", "envoy-lr", "vr-rr")  # "the best of" these, per workload and rate
ROUND_ROBIN_KEYS = ("envoy-rr", "vr-rr")
PREFIX_PEER_KEYS = ("vr-cache", "vr-kv")
CACHE_AWARE_KEY = "vr-cache"
WITHIN_BEST_BASELINE = 1.05  # default TTFT p50 and p99 <= 1.05 x the best baseline
HETEROGENEOUS_P99_TARGET = 1.3  # round robin p99 / default p99
TTFT_SPEEDUP_TARGET = 2.0  # shared prefix: round robin p50 / default p50
HIT_RATE_TARGET = 0.9  # of the best achievable
ADDED_LATENCY_TARGET_MS = 1.0
DECISIONS_TARGET = 2000.0
DECISIONS_TARGET_PODS = 64
LONG_PROMPT_TARGET_MS = 50.0
LONG_PROMPT_TARGET_CONCURRENCY = 20
IDLE_SCRAPE_TARGET_PERCENT = 10.0
IDLE_SCRAPE_TARGET_PODS = 64


@dataclass(slots=True)
class RunInfo:
    command: str
    date: str
    machine: MachineFacts
    quick: bool
    pods: int
    time_scale: float
    pod_profile: str = ""  # how the simulated pods differ from the simulator's defaults
    wall_s: float = math.nan
    notes: list[str] = field(default_factory=list)
    commit: str = ""  # git commit the run measured ("+dirty" when the tree had changes)
    settings: dict[str, str] = field(default_factory=dict)  # every knob of the run, printed verbatim
    raw_results: str = ""  # where the raw JSON of this run was committed, relative to the report


# --- formatting --------------------------------------------------------------------------------

def fmt_ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:,.0f}" if seconds >= 1 else f"{seconds * 1e3:.1f}"


def fmt_pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def fmt_num(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def fmt_ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def fmt_spread_ms(row: RouterPhaseResult, metric: str) -> str:
    """'402 (380-420)': the median and, over several runs, the min-max (model ms)."""
    value = spread_value(row, metric)
    low, high = row.spread.get(metric, [math.nan, math.nan])
    if row.runs < 2 or math.isnan(low):
        return fmt_ms(value)
    return f"{fmt_ms(value)} ({fmt_ms(low)}-{fmt_ms(high)})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


# --- routing tables -----------------------------------------------------------------------------

def best_peer(rows: Sequence[RouterPhaseResult]) -> RouterPhaseResult | None:
    """The peer (not our EPP) with the lowest TTFT p50 that served every request it sent."""
    peers = [r for r in rows if not r.ours and not r.skipped and r.ok and not math.isnan(r.ttft.p50)]
    clean = [r for r in peers if r.errors == 0] or peers
    return min(clean, key=lambda r: r.ttft.p50, default=None)


def phase_table(outcome: PhaseOutcome) -> str:
    peer = best_peer(outcome.rows)
    header = ["Router", "runs", "TTFT p50 (min-max)", "TTFT p90", "TTFT p99 (min-max)", "ITL p50", "ITL p99",
              "E2E p50", "E2E p99", "out tok/s", "ok/err", "prefix hit", "of best", "busiest pod",
              f"TTFT p50 vs best peer ({peer.label if peer else '-'})"]
    rows = []
    for r in outcome.rows:
        name = f"**{r.label}**" if r.ours else r.label
        if r.skipped:
            rows.append([name, f"skipped: {r.skipped}", *[""] * (len(header) - 2)])
            continue
        rows.append([
            name, str(r.runs), fmt_spread_ms(r, "ttft.p50"), fmt_ms(r.ttft.p90), fmt_spread_ms(r, "ttft.p99"),
            fmt_ms(r.itl.p50),
            fmt_ms(r.itl.p99), fmt_ms(r.e2e.p50), fmt_ms(r.e2e.p99), fmt_num(r.output_tokens_per_s),
            f"{r.ok}/{r.errors}", fmt_pct(r.prefix_hit_rate),
            fmt_pct(ratio(r.prefix_hit_rate, outcome.best_hit_rate)), fmt_pct(r.pod_share_max),
            fmt_ratio(ratio(r.ttft.p50, peer.ttft.p50)) if peer else "-",
        ])
    return table(header, rows)


def _row(outcome: PhaseOutcome, key: str) -> RouterPhaseResult | None:
    for r in outcome.rows:
        if r.router == key and not r.skipped and r.ok:
            return r
    return None


def _best_ours(outcome: PhaseOutcome) -> RouterPhaseResult | None:
    ours = [r for r in outcome.rows if r.ours and not r.skipped and r.ok and not math.isnan(r.ttft.p50)]
    return min(ours, key=lambda r: r.ttft.p50, default=None)


def _verdict(value: float, ok: bool) -> str:
    return "-" if math.isnan(value) else ("met" if ok else "**missed**")


def _rows(outcome: PhaseOutcome, keys: Sequence[str]) -> list[RouterPhaseResult]:
    return [r for key in keys if (r := _row(outcome, key)) is not None]


def _where(o: PhaseOutcome) -> str:
    return f"{o.plan.workload} @ {o.plan.params.rate:g} req/s"


@dataclass(slots=True)
class TargetCheck:
    """One target of issue 10 at one place (workload and rate, or overhead case)."""

    target: str
    where: str
    measured: str
    value: float  # the ratio or quantity the verdict is on; NaN = not measured
    met: bool

    @property
    def verdict(self) -> str:
        return "not measured" if math.isnan(self.value) else ("met" if self.met else "**MISSED**")


def baseline_checks(outcomes: Sequence[PhaseOutcome]) -> list[TargetCheck]:
    """Default config TTFT p50 and p99 within 5% of the best of the baselines, everywhere."""
    out = []
    target = (f"{DEFAULT_EPP_KEY} TTFT p50 and p99 <= {WITHIN_BEST_BASELINE:g} x the best of "
              f"{' / '.join(BASELINE_KEYS)}")
    for o in outcomes:
        ours = _row(o, DEFAULT_EPP_KEY)
        base = _rows(o, BASELINE_KEYS)
        if ours is None or not base:
            continue
        parts = []
        worst = -math.inf
        for attr in ("p50", "p99"):
            best = min(base, key=attrgetter(f"ttft.{attr}"))
            value = ratio(getattr(ours.ttft, attr), getattr(best.ttft, attr))
            worst = max(worst, value)
            parts.append(f"{attr} {fmt_ms(getattr(ours.ttft, attr))} vs {best.router} "
                         f"{fmt_ms(getattr(best.ttft, attr))} ms = {fmt_ratio(value)}")
        out.append(TargetCheck(target, _where(o), "; ".join(parts), worst, worst <= WITHIN_BEST_BASELINE))
    return out


def heterogeneous_checks(outcomes: Sequence[PhaseOutcome]) -> list[TargetCheck]:
    out = []
    for o in outcomes:
        ours = _row(o, DEFAULT_EPP_KEY)
        rr = _rows(o, ROUND_ROBIN_KEYS)
        if o.plan.workload != "heterogeneous" or ours is None or not rr:
            continue
        gains = [(r, ratio(r.ttft.p99, ours.ttft.p99)) for r in rr]
        value = min(g for _, g in gains)
        measured = "; ".join(f"{r.router} p99 {fmt_ms(r.ttft.p99)} / {fmt_ms(ours.ttft.p99)} ms = {fmt_ratio(g)}"
                             for r, g in gains)
        out.append(TargetCheck(f"heterogeneous pool: round robin TTFT p99 / {DEFAULT_EPP_KEY} p99 >= "
                               f"{HETEROGENEOUS_P99_TARGET:g}", _where(o), measured, value,
                               value >= HETEROGENEOUS_P99_TARGET))
    return out


def shared_prefix_checks(outcomes: Sequence[PhaseOutcome]) -> list[TargetCheck]:
    out = []
    for o in outcomes:
        ours = _row(o, DEFAULT_EPP_KEY)
        if o.plan.workload != "shared-prefix" or ours is None:
            continue
        rr = _rows(o, ROUND_ROBIN_KEYS)
        if rr:
            gains = [(r, ratio(r.ttft.p50, ours.ttft.p50)) for r in rr]
            value = min(g for _, g in gains)
            out.append(TargetCheck(f"shared prefix: round robin TTFT p50 / {DEFAULT_EPP_KEY} p50 >= "
                                   f"{TTFT_SPEEDUP_TARGET:g}", _where(o),
                                   "; ".join(f"{r.router} {fmt_ms(r.ttft.p50)} / {fmt_ms(ours.ttft.p50)} ms = "
                                             f"{fmt_ratio(g)}" for r, g in gains),
                                   value, value >= TTFT_SPEEDUP_TARGET))
        for peer in _rows(o, PREFIX_PEER_KEYS):
            value = ratio(peer.ttft.p50, ours.ttft.p50)
            out.append(TargetCheck(f"shared prefix: ahead of {peer.router} (its TTFT p50 / ours > 1)", _where(o),
                                   f"{fmt_ms(peer.ttft.p50)} / {fmt_ms(ours.ttft.p50)} ms = {fmt_ratio(value)}",
                                   value, value > 1.0))
    return out


def overhead_checks(result: OverheadResult | None) -> list[TargetCheck]:
    if result is None:
        return []
    out = []
    runs = f"median of {result.repeats}"
    first = result.pools[0] if result.pools else None
    if first is not None:
        value = first.added_c1_p50_ms
        out.append(TargetCheck(f"overhead: added TTFT p50 at c=1 < {ADDED_LATENCY_TARGET_MS:g} ms",
                               f"{first.pods} pods, {result.body_bytes:,} B bodies",
                               f"{value:.3f} ms ({runs}, runs {_span(first.added_c1_p50_runs_ms, '.3f')})",
                               value, value < ADDED_LATENCY_TARGET_MS))
    big = next((p for p in result.pools if p.pods == DECISIONS_TARGET_PODS), None)
    if big is not None:
        value = big.decisions_per_core_s
        out.append(TargetCheck(f"overhead: >= {DECISIONS_TARGET:,.0f} decisions/s per core",
                               f"{big.pods} pods, c={big.concurrency}",
                               f"{fmt_num(value)} ({runs}, runs {_span(big.decisions_runs, ',.0f')})",
                               value, value >= DECISIONS_TARGET))
    for lp in result.long_prompts:
        value = lp.added_p50_ms
        if lp.concurrency == LONG_PROMPT_TARGET_CONCURRENCY:
            out.append(TargetCheck(f"overhead: long prompts added p50 < {LONG_PROMPT_TARGET_MS:g} ms at "
                                   f"c={LONG_PROMPT_TARGET_CONCURRENCY}", f"{lp.pods} pods, {lp.body_bytes:,} B bodies",
                                   f"{value:.1f} ms ({runs}, runs {_span(lp.added_p50_runs_ms, '.1f')})",
                                   value, value < LONG_PROMPT_TARGET_MS))
    idle = next((p for p in result.pools if p.pods == IDLE_SCRAPE_TARGET_PODS), None)
    if idle is not None:
        value = idle.epp_idle_cpu_percent
        out.append(TargetCheck(f"idle scrape cost <= {IDLE_SCRAPE_TARGET_PERCENT:g}% of a core (else make it cheaper)",
                               f"{idle.pods} idle pods",
                               f"{value:.1f}% ({runs}, runs {_span(idle.idle_cpu_runs, '.1f')}%; with a fixed "
                               f"50 ms interval {fmt_num(idle.fixed_idle_cpu_percent, 1)}%)",
                               value, value <= IDLE_SCRAPE_TARGET_PERCENT))
    return out


def _span(values: Sequence[float], spec: str) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "-"
    return f"{format(min(finite), spec)}-{format(max(finite), spec)}"


# Every target family of issue 10 by the start of its TargetCheck.target: one that has no
# check in a run (its cells did not run) is listed as "not measured", never left out.
TARGET_FAMILIES = (
    (f"{DEFAULT_EPP_KEY} TTFT p50 and p99", "default config within 5% of the best baseline on every workload and rate"),
    ("heterogeneous pool", f"heterogeneous pool: >= {HETEROGENEOUS_P99_TARGET:g}x better p99 than round robin"),
    ("shared prefix: round robin", f"shared prefix: >= {TTFT_SPEEDUP_TARGET:g}x round robin at every rate"),
    ("shared prefix: ahead of", "shared prefix: ahead of vllm-router cache_aware and kv_aware at every rate"),
    ("overhead: added", f"overhead: < {ADDED_LATENCY_TARGET_MS:g} ms added p50 at c=1"),
    ("overhead: >=", f"overhead: >= {DECISIONS_TARGET:,.0f} decisions/s per core at {DECISIONS_TARGET_PODS} pods"),
    ("overhead: long prompts",
     f"long prompts: < {LONG_PROMPT_TARGET_MS:g} ms added p50 at c={LONG_PROMPT_TARGET_CONCURRENCY}"),
    ("idle scrape cost",
     f"idle scrape cost <= {IDLE_SCRAPE_TARGET_PERCENT:g}% of a core at {IDLE_SCRAPE_TARGET_PODS} pods"),
)


def all_checks(outcomes: Sequence[PhaseOutcome], overhead: OverheadResult | None) -> list[TargetCheck]:
    checks = [*baseline_checks(outcomes), *heterogeneous_checks(outcomes), *shared_prefix_checks(outcomes),
              *overhead_checks(overhead)]
    for prefix, target in TARGET_FAMILIES:
        if not any(c.target.startswith(prefix) for c in checks):
            checks.append(TargetCheck(target, "-", "its cells did not run", math.nan, False))
    return checks


def targets_markdown(outcomes: Sequence[PhaseOutcome], overhead: OverheadResult | None) -> str:
    checks = all_checks(outcomes, overhead)
    if not checks:
        return "No target could be evaluated: the default config or its references did not run."
    met = sum(1 for c in checks if c.met and not math.isnan(c.value))
    missed = [c for c in checks if not c.met and not math.isnan(c.value)]
    unmeasured = sum(1 for c in checks if math.isnan(c.value))
    summary = (f"{met} of {len(checks)} checks met, {len(missed)} **MISSED**, {unmeasured} not measured"
               + (": " + "; ".join(f"{c.target} at {c.where} ({c.measured.split(';')[0]})" for c in missed)
                  if missed else "") + ".")
    rows = [[c.target, c.where, c.measured, c.verdict] for c in checks]
    return (f"Every target of issue 10, judged on **{DEFAULT_EPP_KEY}** (the embedded default config) with "
            "the medians of the runs. Ratios > 1 mean ours is faster, except in the first target, where the "
            f"ratio is ours / best baseline and must stay <= {WITHIN_BEST_BASELINE:g}.\n\n"
            f"{summary}\n\n" + table(["target", "where", "measured (median)", "verdict"], rows)
            + "\n\nEvery earlier full run's verdicts, and each check over the last five runs: "
              "[bench-history.md](bench-history.md) (`python -m epp bench history`); why a check was missed: "
              "[performance.md](performance.md), \"Missed targets\".")


def routing_targets(outcomes: Sequence[PhaseOutcome]) -> str:
    """The shared-prefix details: hit rate vs the best achievable and the fastest variant."""
    shared = [o for o in outcomes if o.plan.workload == "shared-prefix"]
    if not shared:
        return "No shared-prefix phase ran."
    rows = []
    for o in shared:
        ours = _row(o, DEFAULT_EPP_KEY) or _best_ours(o)
        fastest = _best_ours(o)
        cache = _row(o, CACHE_AWARE_KEY)
        if ours is None:
            rows.append([f"{o.plan.params.rate:g}", "no EPP row", "", "", ""])
            continue
        hit_share = ratio(ours.prefix_hit_rate, o.best_hit_rate)
        rows.append([
            f"{o.plan.params.rate:g}", f"{ours.label}: {fmt_spread_ms(ours, 'ttft.p50')} ms",
            f"{fmt_pct(ours.prefix_hit_rate)} of {fmt_pct(o.best_hit_rate)} = {fmt_pct(hit_share)} "
            f"{_verdict(hit_share, hit_share >= HIT_RATE_TARGET)}",
            f"{fmt_pct(cache.prefix_hit_rate)}" if cache else "-",
            f"{fastest.label}: {fmt_ms(fastest.ttft.p50)} ms" if fastest else "-",
        ])
    header = ["rate (req/s)", "TTFT p50 (min-max)",
              f"prefix hit rate vs best achievable (aim >= {HIT_RATE_TARGET:.0%})",
              "vllm-router cache_aware hit rate", "fastest EPP variant at this rate"]
    return table(header, rows)


def losses(outcomes: Sequence[PhaseOutcome]) -> list[str]:
    """Every phase where a peer beat every EPP variant on TTFT p50 or p99: said, not hidden."""
    out = []
    for o in outcomes:
        peers = [r for r in o.rows if not r.ours and not r.skipped and r.ok and r.errors == 0]
        ours = [r for r in o.rows if r.ours and not r.skipped and r.ok]
        if not peers or not ours:
            continue
        for attr in ("p50", "p99"):
            peer = min(peers, key=lambda r: getattr(r.ttft, attr))
            best = min(ours, key=lambda r: getattr(r.ttft, attr))
            if getattr(peer.ttft, attr) < getattr(best.ttft, attr):
                out.append(f"{o.title} @ {o.plan.params.rate:g} req/s, TTFT {attr}: {peer.label} "
                           f"{fmt_ms(getattr(peer.ttft, attr))} ms beats the best EPP variant ({best.label}, "
                           f"{fmt_ms(getattr(best.ttft, attr))} ms).")
    return out


def routing_markdown(outcomes: Sequence[PhaseOutcome]) -> str:
    parts = []
    for o in outcomes:
        parts.append(f"### {o.title} @ {o.plan.params.rate:g} req/s\n\n"
                     f"{o.plan.params.duration_s:g} model seconds of arrivals per run, "
                     f"{o.requests} requests, mean prompt {o.mean_prompt_tokens:,.0f} tokens, "
                     f"max_tokens {o.plan.params.max_tokens}; best achievable prefix hit rate "
                     f"**{fmt_pct(o.best_hit_rate)}**.\n\n{phase_table(o)}")
        warned = [(r.label, w) for r in o.rows for w in r.router_warnings]
        if warned:
            parts.append("Router log warnings: " + "; ".join(f"{label}: `{w}`" for label, w in warned))
    return "\n\n".join(parts)


# --- overhead ----------------------------------------------------------------------------------


def _bold(verdict: str) -> str:
    """A verdict in bold once (a MISSED verdict is bold already)."""
    return verdict if verdict.startswith("**") else f"**{verdict}**"

def overhead_markdown(result: OverheadResult, info: RunInfo) -> str:
    header = ["pods", "runs", "direct c=1 p50/p99 (ms)", "EPP c=1 p50/p99 (ms)", "added c=1 p50/p99 (ms)",
              "direct c=64 p50/p99", "EPP c=64 p50/p99", "added c=64 p50/p99", "req/s direct / EPP",
              "EPP CPU us/req", "decisions/s per core", "EPP idle CPU (fixed 50 ms scrapes)", "errors"]
    rows = []
    for p in result.pools:
        rows.append([
            str(p.pods), str(p.runs),
            f"{p.direct_c1.p50 * 1e3:.3f} / {p.direct_c1.p99 * 1e3:.3f}",
            f"{p.epp_c1.p50 * 1e3:.3f} / {p.epp_c1.p99 * 1e3:.3f}",
            f"**{p.added_c1_p50_ms:.3f}** / {p.added_c1_p99_ms:.3f}",
            f"{p.direct_cn.p50 * 1e3:.2f} / {p.direct_cn.p99 * 1e3:.2f}",
            f"{p.epp_cn.p50 * 1e3:.2f} / {p.epp_cn.p99 * 1e3:.2f}",
            f"{p.added_cn_p50_ms:.2f} / {p.added_cn_p99_ms:.2f}",
            f"{p.direct_cn_rps:,.0f} / {p.epp_cn_rps:,.0f}",
            f"{p.epp_cpu_us_per_request:,.0f}", f"**{p.decisions_per_core_s:,.0f}**",
            f"{p.epp_idle_cpu_percent:.1f}% ({fmt_num(p.fixed_idle_cpu_percent, 1)}%)", str(p.epp_errors),
        ])
    longs = table(["pods", "concurrency", "body", "direct p50 / p99 (ms)", "Envoy + EPP p50 / p99 (ms)",
                   "added p50 (min-max of runs)", "added p99", "req/s direct / EPP", "EPP CPU us/req", "errors"],
                  [[str(lp.pods), str(lp.concurrency), f"{lp.body_bytes / 1000:,.0f} KB",
                    f"{lp.direct.p50 * 1e3:.1f} / {lp.direct.p99 * 1e3:.1f}",
                    f"{lp.epp.p50 * 1e3:.1f} / {lp.epp.p99 * 1e3:.1f}",
                    f"**{lp.added_p50_ms:.1f}** ({_span(lp.added_p50_runs_ms, '.1f')})", f"{lp.added_p99_ms:.1f}",
                    f"{lp.direct_rps:,.0f} / {lp.epp_rps:,.0f}", fmt_num(lp.epp_cpu_us_per_request), str(lp.errors)]
                   for lp in result.long_prompts])
    decisions = table(["pods", "decision p50 (us)", "decision p99 (us)", "mean (us)"],
                      [[str(d.pods), f"{d.p50_us:.1f}", f"{d.p99_us:.1f}", f"{d.mean_us:.1f}"]
                       for d in result.decisions])
    targets = [f"- {c.target} ({c.where}): {c.measured}, {_bold(c.verdict)}." for c in overhead_checks(result)]
    return "\n".join([
        OVERHEAD_BEGIN,
        "## EPP overhead (instant upstreams)",
        "",
        f"Measured {result.measured or f'{info.date} with `{info.command.strip()}`'}; every number is the "
        f"median of {result.repeats} runs on the same processes (direct and EPP arms alternate within a run). "
        "Upstreams: one Envoy answering direct_response on N loopback ports. Direct: client -> Envoy "
        "(ROUND_ROBIN) -> upstream, with the EPP front Envoy's HTTP filter chain minus ext_proc (header "
        "mutation, buffer, router: the same chain on both paths). With EPP: client -> Envoy -> ext_proc -> "
        "`epp serve` (the embedded default config, epp/config/default-config.yaml, unless the command "
        "passed --config) -> ORIGINAL_DST -> upstream. Both "
        f"Envoys run `--concurrency 1`; requests are ~{result.body_bytes:,} byte chat bodies over keep-alive "
        "HTTP/1.1. Decisions/s per core = 1 / (EPP CPU per request), CPU from /proc utime+stime of the "
        "EPP's process session minus its idle rate (metric scraping). The client, both Envoys and the EPP "
        "share the same cores, so throughput at c=64 is a floor, not the EPP's ceiling. 'EPP idle CPU' is "
        f"the CPU over {fmt_num(result.idle_seconds, 1)} s with no traffic (metric scraping of every pod), in % "
        "of one core, of a second, otherwise identical EPP with the default adaptive scrape interval; in "
        "parentheses the measured EPP's, which scrapes at a fixed 50 ms so that its idle CPU is also its "
        "scrape CPU under load and can be subtracted from the CPU per decision. Where the "
        "time goes (gRPC layer vs our handler vs scraping) and what was done about it: "
        "[performance.md](performance.md).",
        "",
        *targets,
        "",
        table(header, rows),
        "",
        "Long prompts (first pool only; closed loop at each concurrency, same bodies on both paths):",
        "",
        longs if result.long_prompts else "(not measured in this run)",
        "",
        "Decision latency vs pool size (in-process `schedule()` + `pre_request()`, "
        "epp.scheduling.benchmark, 2 KB prompts):",
        "",
        decisions,
        "",
        "![EPP overhead](bench-overhead.png)",
        OVERHEAD_END,
    ])


def replace_overhead_section(document: str, section: str) -> str:
    """`document` with its overhead section replaced (or appended when it has none)."""
    pattern = re.compile(re.escape(OVERHEAD_BEGIN) + r".*?" + re.escape(OVERHEAD_END), re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: section, document, count=1)
    return document.rstrip("\n") + "\n\n" + section + "\n"


# --- the document --------------------------------------------------------------------------------

def settings_markdown(info: RunInfo) -> list[str]:
    return [f"- {name}: {value}" for name, value in info.settings.items()]


def render_report(outcomes: Sequence[PhaseOutcome], overhead: OverheadResult | None, info: RunInfo,
                  plots: Sequence[str]) -> str:
    routers = []
    seen: set[str] = set()
    for o in outcomes:
        for r in o.rows:
            if r.router not in seen:
                seen.add(r.router)
                routers.append(r)
    runs = max((r.runs for o in outcomes for r in o.rows), default=0)
    parts = [
        "# Benchmarks",
        "",
        f"Generated {info.date} by `{info.command.strip()}`"
        + (f" at commit `{info.commit}`" if info.commit else "")
        + (" (**quick mode**: tiny phases, smoke-test numbers only)" if info.quick else "")
        + (f", {info.wall_s / 60:.1f} minutes wall." if not math.isnan(info.wall_s) else "."),
        f"Every routing number is the median over {runs} run(s) of its cell; where there are several runs "
        "the min-max of the runs follows in parentheses."
        + (f" Raw results of this run (every run of every cell): [{info.raw_results}]({info.raw_results})."
           if info.raw_results else ""),
        "Reproduce with `make bench` (full; stops by itself) or `make bench-quick` (2-3 minutes); "
        "`python -m epp bench overhead` reruns only the overhead section, `python -m epp bench --from-results "
        "<json>` re-renders this page from raw results.",
        "",
        "## Machine",
        "",
        *[f"- {line}" for line in info.machine.lines()],
        *[f"- {note}" for note in info.notes],
        "",
        "## Settings of this run",
        "",
        *(settings_markdown(info) or ["- (not recorded)"]),
        "",
        "## Setup",
        "",
        f"- Backends: {info.pods} simulated vLLM pods (`python -m epp sim`, Llama-3.1-8B on H100 latency "
        "model, prefix caching on, KV events on a bound ZMQ socket per pod), started "
        "**fresh for every router, phase and run**, so every router sees identical cold pods."
        + (f" Pod profile: {info.pod_profile}." if info.pod_profile else ""),
        f"- Time scale {info.time_scale:g}: the simulator sleeps {info.time_scale:g} x its model time. "
        "Request rates and all latencies below are in **model (simulated-real) seconds**: arrival offsets "
        "are multiplied by the scale, measured latencies divided by it.",
        "- Client: open-loop Poisson arrivals (seeded, identical for every router within a run; run r uses "
        "seed + r), httpx async streaming chat completions; TTFT = first content token, ITL = gaps between "
        "content tokens, E2E = last byte. Each phase is bounded in request count and in wall time "
        "(unfinished requests count as errors).",
        "- Prefix hit = the pods' `vllm:prefix_cache_hits / vllm:prefix_cache_queries` over the phase. "
        "Best achievable = hit rate if every request went to a pod already holding every block any earlier "
        "request computed (infinite cache, vLLM's block granularity, last token never a hit).",
        "- 'busiest pod' = share of the requests served by the busiest pod (even = "
        f"{1 / max(1, info.pods):.0%}). 'vs best peer' < 1 means faster than the best non-EPP router.",
        "- Routers: " + "; ".join(f"{r.label} (`{r.router}`)" for r in routers) + ". Envoy rows: a "
        "STATIC cluster with that lb_policy behind the EPP front Envoy's filter chain minus ext_proc. "
        "vllm-router rows: default policy parameters, retries and circuit breaker off. EPP rows: Envoy + "
        "ext_proc + `epp serve`: `epp-default` with no --config (the embedded default), `epp-gie` with "
        "GIE's default config, the others with epp/bench/configs/<key>.yaml.",
        "",
        "## Targets (issue 10)",
        "",
        targets_markdown(outcomes, overhead),
        "",
        "Shared-prefix details:",
        "",
        routing_targets(outcomes),
        "",
        "Where a peer beat every EPP variant:",
        "",
        *([f"- {line}" for line in losses(outcomes)] or ["- nowhere in this run."]),
        "",
        "## Results per workload",
        "",
        routing_markdown(outcomes),
        "",
        "## Plots",
        "",
        *[f"![{name}]({name})" for name in plots],
        "",
    ]
    document = "\n".join(parts)
    if overhead is not None:
        document += "\n" + overhead_markdown(overhead, info) + "\n"
    return document


# --- plots -------------------------------------------------------------------------------------

def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_routing(outcomes: Sequence[PhaseOutcome], out_dir: Path) -> list[str]:
    """TTFT vs rate for the shared-prefix sweep, hit rates vs the bound, other workloads."""
    plt = _pyplot()
    written: list[str] = []
    shared = [o for o in outcomes if o.plan.workload == "shared-prefix"]
    if shared:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        keys = [r.router for r in shared[0].rows]
        for key in keys:
            points = [(o.plan.params.rate, r) for o in shared for r in o.rows
                      if r.router == key and not r.skipped and r.ok]
            if not points:
                continue
            label = points[0][1].label
            style = "-" if points[0][1].ours else "--"
            for ax, attr in zip(axes, ("p50", "p99"), strict=True):
                ax.plot([p[0] for p in points], [getattr(p[1].ttft, attr) * 1e3 for p in points],
                        style, marker="o", label=label)
        for ax, attr in zip(axes, ("p50", "p99"), strict=True):
            ax.set_xlabel("offered rate (model requests/s)")
            ax.set_ylabel(f"TTFT {attr} (model ms)")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"Shared-prefix chat: TTFT {attr} vs rate")
        axes[1].legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        fig.savefig(out_dir / "bench-ttft-vs-rate.png", dpi=110)
        plt.close(fig)
        written.append("bench-ttft-vs-rate.png")

        top = shared[-1]
        rows = [r for r in top.rows if not r.skipped]
        fig, ax = plt.subplots(figsize=(10, 4.5))
        ax.bar([r.label for r in rows], [0 if math.isnan(r.prefix_hit_rate) else r.prefix_hit_rate * 100
                                         for r in rows],
               color=["tab:blue" if r.ours else "tab:gray" for r in rows])
        ax.axhline(top.best_hit_rate * 100, color="tab:red", linestyle="--", label="best achievable")
        ax.set_ylabel("prefix-cache hit rate (%)")
        ax.set_title(f"Shared-prefix chat @ {top.plan.params.rate:g} req/s: pod prefix-cache hit rate")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "bench-hit-rate.png", dpi=110)
        plt.close(fig)
        written.append("bench-hit-rate.png")

    others = [o for o in outcomes if o.plan.workload != "shared-prefix"]
    if others:
        fig, axes = plt.subplots(1, len(others), figsize=(5 * len(others), 4.5), squeeze=False)
        for ax, o in zip(axes[0], others, strict=True):
            rows = [r for r in o.rows if not r.skipped and r.ok]
            ax.barh([r.label for r in rows], [r.ttft.p50 * 1e3 for r in rows],
                    color=["tab:blue" if r.ours else "tab:gray" for r in rows])
            ax.set_xlabel("TTFT p50 (model ms)")
            ax.set_title(f"{o.plan.workload} @ {o.plan.params.rate:g} req/s", fontsize=9)
            ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "bench-workloads.png", dpi=110)
        plt.close(fig)
        written.append("bench-workloads.png")
    return written


def plot_overhead(result: OverheadResult, out_dir: Path) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if result.decisions:
        pods = [d.pods for d in result.decisions]
        axes[0].plot(pods, [d.p50_us for d in result.decisions], marker="o", label="p50")
        axes[0].plot(pods, [d.p99_us for d in result.decisions], marker="o", label="p99")
        axes[0].set_xscale("log")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("pods in the pool")
        axes[0].set_ylabel("decision latency (us)")
        axes[0].set_title("In-process decision latency vs pool size")
        axes[0].legend()
        axes[0].grid(True, which="both", alpha=0.3)
    labels = []
    direct = []
    epp = []
    for p in result.pools:
        for c, d, e in (("1", p.direct_c1, p.epp_c1), (str(p.concurrency), p.direct_cn, p.epp_cn)):
            labels.append(f"{p.pods} pods\nc={c}")
            direct.append(d.p50 * 1e3)
            epp.append(e.p50 * 1e3)
    xs = list(range(len(labels)))
    axes[1].bar([x - 0.2 for x in xs], direct, width=0.4, label="Envoy direct", color="tab:gray")
    axes[1].bar([x + 0.2 for x in xs], epp, width=0.4, label="Envoy + EPP", color="tab:blue")
    axes[1].set_xticks(xs, labels, fontsize=8)
    axes[1].set_ylabel("request latency p50 (ms)")
    axes[1].set_yscale("log")
    axes[1].set_title("Instant upstreams: latency p50")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out_dir / "bench-overhead.png", dpi=110)
    plt.close(fig)
    return "bench-overhead.png"
