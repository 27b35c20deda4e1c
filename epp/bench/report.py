"""docs/benchmarks.md and the docs/bench-*.png plots.

The overhead section sits between markers so `python -m epp bench overhead` can replace it
in an existing report without rerunning the routing benchmark.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epp.bench.machine import MachineFacts
from epp.bench.overhead import OverheadResult
from epp.bench.runner import PhaseOutcome, RouterPhaseResult
from epp.bench.stats import ratio

OVERHEAD_BEGIN = "<!-- overhead:begin -->"
OVERHEAD_END = "<!-- overhead:end -->"
ROUND_ROBIN_KEYS = ("envoy-rr", "vr-rr")
CACHE_AWARE_KEY = "vr-cache"
# The targets are judged on the EPP's default configuration (GIE's default scorers and
# weights), not on whichever variant happened to be fastest at a rate.
DEFAULT_EPP_KEY = "epp-prefix"
TTFT_SPEEDUP_TARGET = 2.0
HIT_RATE_TARGET = 0.9  # of the best achievable
ADDED_LATENCY_TARGET_MS = 1.0
DECISIONS_TARGET = 2000.0
DECISIONS_TARGET_PODS = 64


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


# --- formatting --------------------------------------------------------------------------------

def fmt_ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:,.0f}" if seconds >= 1 else f"{seconds * 1e3:.1f}"


def fmt_pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


def fmt_num(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def fmt_ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


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
    header = ["Router", "TTFT p50", "TTFT p90", "TTFT p99", "ITL p50", "ITL p99", "E2E p50", "E2E p99",
              "out tok/s", "ok/err", "prefix hit", "of best", "busiest pod",
              f"TTFT p50 vs best peer ({peer.label if peer else '-'})"]
    rows = []
    for r in outcome.rows:
        name = f"**{r.label}**" if r.ours else r.label
        if r.skipped:
            rows.append([name, f"skipped: {r.skipped}", *[""] * (len(header) - 2)])
            continue
        rows.append([
            name, fmt_ms(r.ttft.p50), fmt_ms(r.ttft.p90), fmt_ms(r.ttft.p99), fmt_ms(r.itl.p50),
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


def routing_targets(outcomes: Sequence[PhaseOutcome]) -> str:
    shared = [o for o in outcomes if o.plan.workload == "shared-prefix"]
    if not shared:
        return "No shared-prefix phase ran, so the routing targets were not evaluated."
    rows = []
    label = DEFAULT_EPP_KEY
    for o in shared:
        ours = _row(o, DEFAULT_EPP_KEY) or _best_ours(o)
        fastest = _best_ours(o)
        rr = [r for key in ROUND_ROBIN_KEYS if (r := _row(o, key)) is not None]
        cache = _row(o, CACHE_AWARE_KEY)
        if ours is None:
            rows.append([f"{o.plan.params.rate:g}", "no EPP row", "", "", "", ""])
            continue
        label = ours.label
        speedup = min((ratio(r.ttft.p50, ours.ttft.p50) for r in rr), default=math.nan)
        vs_cache = ratio(cache.ttft.p50, ours.ttft.p50) if cache else math.nan
        hit_share = ratio(ours.prefix_hit_rate, o.best_hit_rate)
        rows.append([
            f"{o.plan.params.rate:g}",
            f"{fmt_ms(ours.ttft.p50)} ms",
            f"{fmt_ratio(speedup)} {_verdict(speedup, speedup >= TTFT_SPEEDUP_TARGET)}",
            f"{fmt_ratio(vs_cache)} {_verdict(vs_cache, vs_cache > 1.0)}",
            f"{fmt_pct(ours.prefix_hit_rate)} of {fmt_pct(o.best_hit_rate)} = {fmt_pct(hit_share)} "
            f"{_verdict(hit_share, hit_share >= HIT_RATE_TARGET)}",
            f"{fastest.label}: {fmt_ms(fastest.ttft.p50)} ms" if fastest else "-",
        ])
    header = ["rate (req/s)", "TTFT p50",
              f"speed-up vs round robin (target >= {TTFT_SPEEDUP_TARGET:g}x; the worse of Envoy and vllm-router)",
              "speed-up vs vllm-router cache_aware (target > 1x)",
              f"prefix hit rate vs best achievable (target >= {HIT_RATE_TARGET:.0%})",
              "fastest EPP variant at this rate"]
    return (f"Judged on **{label}** (the default configuration: GIE's scorers and weights), shared-prefix "
            "workload, same rate for every router.\n\n" + table(header, rows))


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
                     f"{o.requests} requests, mean prompt {o.mean_prompt_tokens:,.0f} tokens, "
                     f"max_tokens {o.plan.params.max_tokens}; best achievable prefix hit rate "
                     f"**{fmt_pct(o.best_hit_rate)}**.\n\n{phase_table(o)}")
        warned = [(r.label, w) for r in o.rows for w in r.router_warnings]
        if warned:
            parts.append("Router log warnings: " + "; ".join(f"{label}: `{w}`" for label, w in warned))
    return "\n\n".join(parts)


# --- overhead ----------------------------------------------------------------------------------

def overhead_markdown(result: OverheadResult, info: RunInfo) -> str:
    header = ["pods", "direct c=1 p50/p99 (ms)", "EPP c=1 p50/p99 (ms)", "added c=1 p50/p99 (ms)",
              "direct c=64 p50/p99", "EPP c=64 p50/p99", "added c=64 p50/p99", "req/s direct / EPP",
              "EPP CPU us/req", "decisions/s per core", "EPP idle CPU", "errors"]
    rows = []
    for p in result.pools:
        rows.append([
            str(p.pods),
            f"{p.direct_c1.p50 * 1e3:.3f} / {p.direct_c1.p99 * 1e3:.3f}",
            f"{p.epp_c1.p50 * 1e3:.3f} / {p.epp_c1.p99 * 1e3:.3f}",
            f"**{p.added_c1_p50_ms:.3f}** / {p.added_c1_p99_ms:.3f}",
            f"{p.direct_cn.p50 * 1e3:.2f} / {p.direct_cn.p99 * 1e3:.2f}",
            f"{p.epp_cn.p50 * 1e3:.2f} / {p.epp_cn.p99 * 1e3:.2f}",
            f"{p.added_cn_p50_ms:.2f} / {p.added_cn_p99_ms:.2f}",
            f"{p.direct_cn_rps:,.0f} / {p.epp_cn_rps:,.0f}",
            f"{p.epp_cpu_us_per_request:,.0f}", f"**{p.decisions_per_core_s:,.0f}**",
            f"{p.epp_idle_cpu_percent:.0f}%", str(p.epp_errors),
        ])
    decisions = table(["pods", "decision p50 (us)", "decision p99 (us)", "mean (us)"],
                      [[str(d.pods), f"{d.p50_us:.1f}", f"{d.p99_us:.1f}", f"{d.mean_us:.1f}"]
                       for d in result.decisions])
    targets = []
    first = result.pools[0] if result.pools else None
    if first is not None:
        ok = first.added_c1_p50_ms < ADDED_LATENCY_TARGET_MS
        targets.append(f"- EPP added latency p50 at concurrency 1 < {ADDED_LATENCY_TARGET_MS:g} ms "
                       f"({first.pods} pods): {first.added_c1_p50_ms:.3f} ms, **{'met' if ok else 'missed'}**.")
    big = next((p for p in result.pools if p.pods == DECISIONS_TARGET_PODS), None)
    if big is not None:
        ok = big.decisions_per_core_s >= DECISIONS_TARGET
        targets.append(f"- One EPP process >= {DECISIONS_TARGET:,.0f} decisions/s on one core with "
                       f"{DECISIONS_TARGET_PODS} pods: {big.decisions_per_core_s:,.0f} decisions/s per core "
                       f"({big.epp_cpu_us_per_request:,.0f} us CPU per request, {big.epp_cn_rps:,.0f} req/s "
                       f"reached through Envoy at c={big.concurrency}), **{'met' if ok else 'missed'}**.")
    return "\n".join([
        OVERHEAD_BEGIN,
        "## EPP overhead (instant upstreams)",
        "",
        f"Measured {result.measured or f'{info.date} with `{info.command.strip()}`'}. "
        "Upstreams: one Envoy answering direct_response on N loopback ports. Direct: client -> Envoy "
        "(ROUND_ROBIN) -> upstream. With EPP: client -> Envoy -> ext_proc -> `epp serve` (embedded "
        "default config: queue + KV-cache + approximate prefix scorers) -> ORIGINAL_DST -> upstream. Both "
        f"Envoys run `--concurrency 1`; requests are ~{result.body_bytes:,} byte chat bodies over keep-alive "
        "HTTP/1.1. Decisions/s per core = 1 / (EPP CPU per request), CPU from /proc utime+stime of the "
        "EPP's process session minus its idle rate (metric scraping). The client, both Envoys and the EPP "
        "share the same cores, so throughput at c=64 is a floor, not the EPP's ceiling. Where the "
        "time goes (gRPC layer vs our handler vs scraping) and what was done about it: "
        "[performance.md](performance.md).",
        "",
        *targets,
        "",
        table(header, rows),
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

def render_report(outcomes: Sequence[PhaseOutcome], overhead: OverheadResult | None, info: RunInfo,
                  plots: Sequence[str]) -> str:
    routers = []
    seen: set[str] = set()
    for o in outcomes:
        for r in o.rows:
            if r.router not in seen:
                seen.add(r.router)
                routers.append(r)
    parts = [
        "# Benchmarks",
        "",
        f"Generated {info.date} by `{info.command.strip()}`"
        + (" (**quick mode**: tiny phases, smoke-test numbers only)" if info.quick else "")
        + (f", {info.wall_s / 60:.1f} minutes wall." if not math.isnan(info.wall_s) else "."),
        "Reproduce with `make bench` (full, ~20 minutes, stops by itself) or `make bench-quick` "
        "(< 2 minutes); `python -m epp bench overhead` reruns only the overhead section.",
        "",
        "## Machine",
        "",
        *[f"- {line}" for line in info.machine.lines()],
        "",
        "## Setup",
        "",
        f"- Backends: {info.pods} simulated vLLM pods (`python -m epp sim`, Llama-3.1-8B on H100 latency "
        "model, prefix caching on, block size 16, KV events on a bound ZMQ socket per pod), started "
        "**fresh for every router and every phase**, so every router sees identical cold pods."
        + (f" Pod profile: {info.pod_profile}." if info.pod_profile else ""),
        f"- Time scale {info.time_scale:g}: the simulator sleeps {info.time_scale:g} x its model time. "
        "Request rates and all latencies below are in **model (simulated-real) seconds**: arrival offsets "
        "are multiplied by the scale, measured latencies divided by it.",
        "- Client: open-loop Poisson arrivals (seeded, identical for every router), httpx async streaming "
        "chat completions; TTFT = first content token, ITL = gaps between content tokens, E2E = last byte. "
        "Each phase is bounded in request count and in wall time (unfinished requests count as errors).",
        "- Prefix hit = the pods' `vllm:prefix_cache_hits / vllm:prefix_cache_queries` over the phase. "
        "Best achievable = hit rate if every request went to a pod already holding every block any earlier "
        "request computed (infinite cache, vLLM's block granularity, last token never a hit).",
        "- 'busiest pod' = share of the requests served by the busiest pod (even = "
        f"{1 / info.pods:.0%}). 'vs best peer' < 1 means faster than the best non-EPP router.",
        "- Routers: " + "; ".join(f"{r.label} (`{r.router}`)" for r in routers) + ". Envoy rows: a "
        "STATIC cluster with that lb_policy. vllm-router rows: default policy parameters, retries and "
        "circuit breaker off. EPP rows: Envoy + ext_proc + `epp serve` with epp/bench/configs/<key>.yaml.",
        *[f"- {note}" for note in info.notes],
        "",
        "## Routing targets",
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
