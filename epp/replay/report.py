"""Side-by-side report of replays: Markdown tables and an SVG plot.

The plot is SVG written here rather than matplotlib: `epp replay` runs on an operator's
machine with the plain `epp` install, and matplotlib is only a `bench` extra. Two panels:
TTFT p50 / p90 / p99 per config, and the share of requests each pod received per config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from epp.bench.report import fmt_ms, fmt_num, fmt_pct, table
from epp.replay.replayer import ReplayResult

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7")


def _errors(r: ReplayResult) -> str:
    return ", ".join(f"{k}: {v}" for k, v in r.errors.items()) or "0"


def summary_table(results: Sequence[ReplayResult]) -> str:
    rows = []
    for r in results:
        agree = "-" if not r.picks_compared else f"{r.picks_matched}/{r.picks_compared}"
        if r.ties:
            agree += f" ({r.ties_followed} of {r.ties} ties broken as recorded)"
        rows.append([
            f"`{r.name}`", f"{r.completed}/{r.requests}", _errors(r),
            fmt_ms(r.ttft.p50), fmt_ms(r.ttft.p90), fmt_ms(r.ttft.p99),
            fmt_ms(r.e2e.p50), fmt_ms(r.e2e.p99), fmt_pct(r.hit_rate),
            "-" if math.isnan(r.balance) else f"{r.balance:.2f}",
            fmt_num(r.decision_us.mean, 0), fmt_num(r.decision_us.p99, 0), agree,
        ])
    return table(["config", "completed", "errors", "TTFT p50 ms", "TTFT p90 ms", "TTFT p99 ms",
                  "E2E p50 ms", "E2E p99 ms", "prefix hit rate", "max/mean pod load",
                  "decision CPU µs mean", "decision CPU µs p99", "recorded picks reproduced"], rows)


def pods_table(results: Sequence[ReplayResult]) -> str:
    hostports = list(dict.fromkeys(p.hostport for r in results for p in r.pods))
    rows = []
    for hp in hostports:
        cells = [f"`{hp}`"]
        for r in results:
            stats = next((p for p in r.pods if p.hostport == hp), None)
            if stats is None:
                cells.append("-")
                continue
            share = stats.requests / r.requests if r.requests else math.nan
            extra = f", {stats.prefills} prefills" if stats.prefills else ""
            cells.append(f"{stats.requests} ({fmt_pct(share)}{extra})")
        rows.append(cells)
    return table(["pod", *(f"`{r.name}`" for r in results)], rows)


def markdown(results: Sequence[ReplayResult], trace_desc: str, command: str, plot: str | None) -> str:
    rate = results[0].rate_scale if results else 1.0
    lines = [
        "# Replay report", "",
        f"Trace: {trace_desc}; rate scale {rate:g}.", "",
        f"Command: `{command}`", "",
        "Latencies are simulated time (epp/sim's latency model, `--sim-profile`); decision cost is "
        "this machine's CPU time per scheduling decision (schedule + pre-request plugins, in-process, "
        "without Envoy and gRPC).", "",
        summary_table(results), "",
        "## Requests per pod", "",
        pods_table(results), "",
    ]
    mism = [r for r in results if r.mismatches]
    if mism:
        lines += ["## Picks that differ from the recording (first ones)", ""]
        for r in mism:
            lines.append(f"- `{r.name}`: " + "; ".join(f"{rid}: recorded {a}, replayed {b}"
                                                     for rid, a, b in r.mismatches[:5]))
        lines.append("")
    if plot:
        lines += [f"![replay]({plot})", ""]
    lines.append(f"Replays took {', '.join(f'{r.wall_s:.1f} s' for r in results)} of wall time "
                 f"for {', '.join(f'{r.virtual_s:.1f} s' for r in results)} of simulated traffic.")
    return "\n".join(lines) + "\n"


def svg_plot(results: Sequence[ReplayResult], width: int = 900, height: int = 360) -> str:
    """Two bar charts: TTFT p50 / p90 / p99 per config (left), share of requests per pod per
    config (right)."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    half = width // 2
    groups = [("TTFT p50", [r.ttft.p50 * 1e3 for r in results]),
              ("TTFT p90", [r.ttft.p90 * 1e3 for r in results]),
              ("TTFT p99", [r.ttft.p99 * 1e3 for r in results])]
    out += _bars(groups, [r.name for r in results], 0, half, height, "time to first token (simulated ms)")
    hostports = list(dict.fromkeys(p.hostport for r in results for p in r.pods))
    pod_groups = []
    for hp in hostports:
        values = []
        for r in results:
            stats = next((p for p in r.pods if p.hostport == hp), None)
            values.append(100.0 * stats.requests / r.requests if stats is not None and r.requests else 0.0)
        pod_groups.append((hp, values))
    out += _bars(pod_groups, [r.name for r in results], half, half, height, "share of requests (%)")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _bars(groups: Sequence[tuple[str, Sequence[float]]], series: Sequence[str], x0: int, width: int,
          height: int, title: str) -> list[str]:
    left, right, top, bottom = x0 + 50, x0 + width - 10, 30, height - 80
    finite = [v for _, vals in groups for v in vals if not math.isnan(v)]
    vmax = max(finite, default=1.0) or 1.0
    scale = (bottom - top) / (vmax * 1.1)
    out = [f'<text x="{x0 + width / 2}" y="16" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
           f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>']
    for i in range(5):  # y ticks
        v = vmax * 1.1 * i / 4
        y = bottom - v * scale
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{v:.3g}</text>')
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#ddd"/>')
    slot = (right - left) / max(1, len(groups))
    bar = slot * 0.8 / max(1, len(series))
    for gi, (label, values) in enumerate(groups):
        gx = left + gi * slot + slot * 0.1
        for si, v in enumerate(values):
            if math.isnan(v):
                continue
            h = v * scale
            x = gx + si * bar
            out.append(f'<rect x="{x:.1f}" y="{bottom - h:.1f}" width="{bar * 0.95:.1f}" '
                       f'height="{h:.1f}" fill="{PALETTE[si % len(PALETTE)]}"><title>{escape(series[si])}: '
                       f'{v:.3g}</title></rect>')
            out.append(f'<text x="{x + bar * 0.47:.1f}" y="{bottom - h - 3:.1f}" text-anchor="middle" '
                       f'font-size="9">{v:.3g}</text>')
        out.append(f'<text x="{gx + slot * 0.4:.1f}" y="{bottom + 14}" text-anchor="middle">'
                   f'{escape(label[:18])}</text>')
    for si, name in enumerate(series):  # legend
        y = bottom + 30 + 14 * si
        out.append(f'<rect x="{left}" y="{y - 9}" width="10" height="10" fill="{PALETTE[si % len(PALETTE)]}"/>')
        out.append(f'<text x="{left + 14}" y="{y}">{escape(name[:60])}</text>')
    return out
