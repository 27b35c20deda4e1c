"""Terminal rendering of admin API messages with rich (tables; colours only on a terminal)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text


def console() -> Console:
    # Wide enough for the score table when piped; a terminal uses its own width.
    return Console(width=None if _isatty() else 160, highlight=False)


def _isatty() -> bool:
    import sys

    return sys.stdout.isatty()


def render_decision(d: Any) -> RenderableType:
    """A Decision as a header, one table per profile (pods x scorers) and the filtered pods."""
    parts: list[RenderableType] = []
    head = Text()
    head.append(f"request {d.request_id}  model {d.model}")
    if d.target_model and d.target_model != d.model:
        head.append(f" -> {d.target_model}")
    head.append("  (dry run)" if d.dry_run else "")
    parts.append(head)
    if d.error:
        parts.append(Text(f"refused: HTTP {d.error_status}: {d.error}", style="bold red"))
    else:
        line = Text("destination: ")
        line.append(f"{d.target} ({d.target_hostport})", style="bold green")
        line.append(f"  profile: {d.primary_profile}")
        if d.fallbacks:
            line.append(f"  fallbacks: {', '.join(d.fallbacks)}")
        parts.append(line)
        for k, v in sorted(d.upstream_headers.items()):
            parts.append(Text(f"upstream header {k}: {v}"))
    if d.pd.applicable:
        pd = d.pd
        verdict = (f"remote prefill on {pd.prefill_endpoint}" if pd.remote_prefill
                   else f"local prefill on the decode pod ({pd.reason or 'no reason given'})")
        parts.append(Text(f"P/D: {verdict}; prompt {pd.prompt_tokens} tokens, {pd.cached_tokens} cached on "
                          f"the decode pod, threshold {pd.threshold_tokens} uncached tokens"))
    for p in d.profiles:
        parts.append(_profile_table(p))
        if p.dropped:
            dropped = Table(title=f"profile {p.name}: filtered out", title_justify="left", show_edge=False)
            for col in ("pod", "filter", "reason"):
                dropped.add_column(col)
            for x in p.dropped:
                dropped.add_row(x.endpoint, f"{x.filter} ({x.filter_type})", x.reason)
            parts.append(dropped)
        if p.empty_reason:
            parts.append(Text(f"profile {p.name}: no pick: {p.empty_reason}", style="yellow"))
    parts.append(Text(f"scheduling took {d.scheduling_seconds * 1e3:.2f} ms", style="dim"))
    return Group(*parts)


def _profile_table(p: Any) -> Table:
    picked = set(p.picked)
    title = f"profile {p.name}: picker {p.picker}"
    if p.ties > 1:
        title += f" (tie between {p.ties} pods, broken at random)"
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("pod")
    scorers: list[tuple[str, float]] = []
    if p.endpoints:
        scorers = [(s.scorer, s.weight) for s in p.endpoints[0].scores]
    for name, weight in scorers:
        table.add_column(f"{name} x{weight:g}", justify="right")
    table.add_column("prefix match", justify="right")
    table.add_column("total", justify="right")
    for e in sorted(p.endpoints, key=lambda e: e.total, reverse=True):
        cells = [f"{s.raw:.3f} -> {s.weighted:.3f}" for s in e.scores]
        prefix = (f"{e.prefix_match_blocks}/{e.prefix_total_blocks} blocks" if e.prefix_total_blocks
                  else ("-" if not e.prefix_cached_tokens else ""))
        if e.prefix_cached_tokens:
            prefix = f"{prefix} {e.prefix_cached_tokens} tok".strip()
        mark = "* " if e.endpoint in picked else "  "
        style = "bold green" if e.endpoint in picked else None
        table.add_row(mark + e.endpoint, *cells, prefix, f"{e.total:.3f}", style=style)
    return table


def render_pool(snap: Any, address: str = "") -> RenderableType:
    """A PoolSnapshot as the `epp top` screen."""
    stats = snap.decisions
    hit = f"{stats.prefix_hit_rate:.0%}" if stats.prefix_hit_rate >= 0 else "-"
    head = Text(f"pool {snap.pool_namespace}/{snap.pool_name}  {address}  "
                f"{time.strftime('%H:%M:%S', time.localtime(snap.unix_nanos / 1e9))}  "
                f"decisions {stats.total} ({stats.per_second:.1f}/s)  errors {stats.errors}  "
                f"prefix hit rate {hit}")
    table = Table(show_edge=False)
    for col, justify in (("pod", "left"), ("role", "left"), ("health", "left"), ("queue", "right"),
                         ("running", "right"), ("KV use", "right"), ("in-flight", "right"),
                         ("decisions/s", "right"), ("hit rate", "right"), ("index blocks", "right"),
                         ("metrics age", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    # One namespace (the usual case): show pod names only, the header names the namespace,
    # and keep that column whole on a narrow terminal (the numbers shrink first).
    names = {e.key: e.key.split("/", 1)[-1] for e in snap.endpoints}
    if len({e.key.split("/", 1)[0] for e in snap.endpoints}) > 1:
        names = {e.key: e.key for e in snap.endpoints}
    table.columns[0].min_width = max((len(n) for n in names.values()), default=3)
    table.columns[0].no_wrap = True
    blocks: dict[str, int] = {}
    for c in snap.index_coverage:
        if c.blocks >= 0:
            blocks[c.endpoint] = max(blocks.get(c.endpoint, 0), int(c.blocks))
    for e in snap.endpoints:
        m = e.metrics
        inflight = e.inflight + e.peer_inflight
        table.add_row(
            names[e.key], e.role, Text("ok" if e.healthy else "DOWN", style="green" if e.healthy else "bold red"),
            str(m.waiting_queue_size), str(m.running_requests), f"{m.kv_cache_usage:.0%}", str(inflight),
            f"{e.decisions_per_second:.1f}", f"{e.prefix_hit_rate:.0%}" if e.prefix_hit_rate >= 0 else "-",
            str(blocks[e.key]) if e.key in blocks else "-",
            f"{e.metrics_age_seconds:.2f}s" if e.metrics_age_seconds >= 0 else "never")
    return Group(head, table)
