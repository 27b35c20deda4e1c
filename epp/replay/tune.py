"""`epp tune`: search scheduler-config settings by replaying a trace, within a time budget.

A search dimension is `NAME.FIELD=VALUES`:
- NAME is a plugin's name in the config (its type when it has no name), optionally
  qualified by a scheduling profile (`decode/queue-scorer.weight`);
- FIELD `weight` is the plugin's weight in the profile(s) that reference it; any other FIELD
  is a plugin parameter as spelled in the YAML (`prefix-cache-scorer.balanceAbsThreshold`);
- VALUES is `1..4` (integers, inclusive), `0.5..2:0.5` (start..stop:step) or a list `1,2,8`.

Every candidate is the base config with the values applied, replayed against the same trace
and simulator profile (epp/replay/replayer.py), and ranked by an objective (lower is
better; a candidate that lost or failed requests ranks after every candidate that did not).
The grid is walked in full when it fits the budget's trial count estimate, otherwise in a
seeded random order; the base config is always trial 0 so the report says what the winner
gains over it. The winner is written as an EndpointPickerConfig file.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

from epp.bench.report import fmt_ms, fmt_pct, table
from epp.replay.profile import SimProfile
from epp.replay.replayer import Replayer, ReplayError, ReplayResult
from epp.replay.trace import Trace

OBJECTIVES: dict[str, Callable[[ReplayResult], float]] = {
    "ttft-p50": lambda r: r.ttft.p50,
    "ttft-p90": lambda r: r.ttft.p90,
    "ttft-p99": lambda r: r.ttft.p99,
    "ttft-mean": lambda r: r.ttft.mean,
    "e2e-p50": lambda r: r.e2e.p50,
    "e2e-p90": lambda r: r.e2e.p90,
    "e2e-p99": lambda r: r.e2e.p99,
    "e2e-mean": lambda r: r.e2e.mean,
}
MAX_GRID = 100_000


class SearchError(ValueError):
    pass


@dataclass(slots=True, frozen=True)
class Dimension:
    profile: str | None
    plugin: str
    field: str
    values: tuple[Any, ...]

    @property
    def label(self) -> str:
        return f"{self.profile + '/' if self.profile else ''}{self.plugin}.{self.field}"


def _number(text: str, spec: str) -> int | float:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise SearchError(f"--search {spec!r}: {text!r} is not a number") from None
    return int(value) if value == value.to_integral_value() and "." not in text else float(value)


def parse_dimension(spec: str) -> Dimension:
    """`[profile/]plugin.field=VALUES` (see the module docstring)."""
    target, eq, values = spec.partition("=")
    if not eq or not values.strip():
        raise SearchError(f"--search {spec!r}: expected NAME.FIELD=VALUES, e.g. queue-scorer.weight=1..4")
    profile: str | None = None
    if "/" in target:
        profile, _, target = target.partition("/")
    plugin, dot, fld = target.rpartition(".")
    if not dot or not plugin or not fld:
        raise SearchError(f"--search {spec!r}: expected NAME.FIELD before '=' (e.g. queue-scorer.weight)")
    return Dimension(profile, plugin.strip(), fld.strip(), _values(values.strip(), spec))


def _values(text: str, spec: str) -> tuple[Any, ...]:
    if ".." in text:
        span, _, step_text = text.partition(":")
        lo_text, _, hi_text = span.partition("..")
        lo, hi = _number(lo_text, spec), _number(hi_text, spec)
        step = _number(step_text, spec) if step_text else 1
        if step <= 0 or hi < lo:
            raise SearchError(f"--search {spec!r}: a range needs start <= stop and a step > 0")
        count = math.floor((Decimal(str(hi)) - Decimal(str(lo))) / Decimal(str(step)) + Decimal("1e-9")) + 1
        if count > 1000:
            raise SearchError(f"--search {spec!r}: {count} values; use a coarser step")
        is_int = all(isinstance(v, int) for v in (lo, hi, step))
        out = [Decimal(str(lo)) + Decimal(str(step)) * i for i in range(count)]
        return tuple(int(v) if is_int else float(v) for v in out)
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise SearchError(f"--search {spec!r}: no values")
    return tuple(yaml.safe_load(v) for v in items)  # numbers, booleans and strings as YAML reads them


def apply(base: dict[str, Any], settings: Sequence[tuple[Dimension, Any]], source: str) -> dict[str, Any]:
    """A deep copy of the config mapping with the settings applied (SearchError naming the
    config and the dimension when the plugin or profile does not exist)."""
    doc = copy.deepcopy(base)
    for dim, value in settings:
        if dim.field == "weight":
            profiles = doc.get("schedulingProfiles")
            if not isinstance(profiles, list):
                raise SearchError(f"{source}: {dim.label}: the config has no schedulingProfiles to set a weight in")
            hits = 0
            for prof in profiles:
                if not isinstance(prof, dict) or (dim.profile and prof.get("name") != dim.profile):
                    continue
                for ref in prof.get("plugins") or []:
                    if isinstance(ref, dict) and ref.get("pluginRef") == dim.plugin:
                        ref["weight"] = value
                        hits += 1
            if not hits:
                where = f"profile {dim.profile!r}" if dim.profile else "any scheduling profile"
                raise SearchError(f"{source}: {dim.label}: no pluginRef {dim.plugin!r} in {where}")
            continue
        plugins = doc.get("plugins")
        entry = None
        for p in plugins if isinstance(plugins, list) else []:
            if isinstance(p, dict) and (p.get("name") or p.get("type")) == dim.plugin:
                entry = p
                break
        if entry is None:
            raise SearchError(f"{source}: {dim.label}: no plugin named {dim.plugin!r} in 'plugins'")
        params = entry.get("parameters")
        if not isinstance(params, dict):
            params = entry["parameters"] = {}
        params[dim.field] = value
    return doc


@dataclass(slots=True)
class Trial:
    index: int
    settings: tuple[tuple[str, Any], ...]
    result: ReplayResult | None
    score: float
    error: str = ""
    config_text: str = ""

    @property
    def failed_requests(self) -> int:
        r = self.result
        return r.requests - r.completed if r is not None else 0

    def rank_key(self) -> tuple[int, int, float]:
        bad = self.result is None or math.isnan(self.score)
        return (1 if bad else 0, self.failed_requests, self.score if not bad else math.inf)


@dataclass(slots=True)
class TuneOutcome:
    objective: str
    trials: list[Trial]
    grid_size: int
    budget_s: float
    elapsed_s: float
    order: str  # "grid" or "random"
    dimensions: list[Dimension] = field(default_factory=list)

    @property
    def ranked(self) -> list[Trial]:
        return sorted(self.trials, key=Trial.rank_key)

    @property
    def best(self) -> Trial | None:
        ranked = [t for t in self.ranked if t.result is not None]
        return ranked[0] if ranked else None

    @property
    def baseline(self) -> Trial | None:
        return next((t for t in self.trials if t.index == 0), None)


def tune(trace: Trace, base_text: str, base_source: str, dimensions: Sequence[Dimension], *,
         objective: str = "ttft-p90", budget_s: float = 60.0, max_trials: int = 0,
         profile: SimProfile | None = None, rate_scale: float = 1.0, seed: int = 0,
         progress: Callable[[str], None] | None = None) -> TuneOutcome:
    if objective not in OBJECTIVES:
        raise SearchError(f"unknown objective {objective!r}; one of {', '.join(OBJECTIVES)}")
    if not dimensions:
        raise SearchError("give at least one --search NAME.FIELD=VALUES")
    if budget_s <= 0:
        raise SearchError(f"--budget-s must be > 0, got {budget_s}")
    try:
        base = yaml.safe_load(base_text) or {}
    except yaml.YAMLError as e:
        raise SearchError(f"{base_source}: not valid YAML: {e}") from None
    if not isinstance(base, dict):
        raise SearchError(f"{base_source}: the config must be a mapping")
    grid_size = math.prod(len(d.values) for d in dimensions)
    if grid_size > MAX_GRID:
        raise SearchError(f"the search grid has {grid_size} points; narrow it (at most {MAX_GRID})")
    for d in dimensions:  # fail on a typo before spending the budget
        apply(base, [(d, d.values[0])], base_source)
    combos: list[tuple[Any, ...]] = list(itertools.product(*(d.values for d in dimensions)))
    order = "grid"
    if max_trials and grid_size > max_trials:
        order = "random"
    rng = random.Random(seed)
    started = time.perf_counter()
    score = OBJECTIVES[objective]
    trials: list[Trial] = []

    def run(index: int, text: str, label: tuple[tuple[str, Any], ...]) -> Trial:
        name = ", ".join(f"{k}={v}" for k, v in label) or f"{base_source} (base)"
        try:
            result = Replayer(trace, text, f"{base_source} [{name}]", name=name, profile=profile,
                              rate_scale=rate_scale, seed=seed).run()
        except (ReplayError, ValueError) as e:  # ConfigError is a ValueError: a value the plugin refuses
            return Trial(index, label, None, math.nan, str(e), text)
        return Trial(index, label, result, score(result), "", text)

    trials.append(run(0, base_text, ()))
    if progress is not None:
        progress(_progress_line(trials[-1], objective))
    pending = combos[:]
    if order == "grid":
        # Walk the grid in a seeded random order anyway: when the budget cuts the walk short,
        # the trials done are spread over the space rather than one corner of it.
        rng.shuffle(pending)
    else:
        pending = rng.sample(pending, max_trials)
    covered = 0  # grid points evaluated, or skipped as the base config
    for values in pending:
        elapsed = time.perf_counter() - started
        mean = elapsed / len(trials)
        if elapsed + mean > budget_s:
            break
        if max_trials and len(trials) > max_trials:
            break
        settings = list(zip(dimensions, values, strict=True))
        doc = apply(base, settings, base_source)
        covered += 1
        if doc == base:
            continue  # the base config itself: trial 0 already ran it
        text = yaml.safe_dump(doc, sort_keys=False)
        trials.append(run(len(trials), text, tuple((d.label, v) for d, v in settings)))
        if progress is not None:
            progress(_progress_line(trials[-1], objective))
    if order == "grid" and covered < grid_size:
        order = "grid (cut by the budget)"
    return TuneOutcome(objective, trials, grid_size, budget_s, time.perf_counter() - started, order,
                       list(dimensions))


def _progress_line(t: Trial, objective: str) -> str:
    what = ", ".join(f"{k}={v}" for k, v in t.settings) or "base config"
    if t.result is None:
        return f"trial {t.index}: {what}: error: {t.error}"
    return f"trial {t.index}: {what}: {objective} {fmt_ms(t.score)} ms, hit rate {fmt_pct(t.result.hit_rate)}"


def report_markdown(outcome: TuneOutcome, command: str, top: int = 10) -> str:
    base = outcome.baseline
    rows = []
    for rank, t in enumerate(outcome.ranked[:top], 1):
        what = ", ".join(f"`{k}={v}`" for k, v in t.settings) or "base config"
        r = t.result
        if r is None:
            rows.append([str(rank), what, "error", t.error[:80], "-", "-", "-", "-"])
            continue
        gain = "-"
        if base is not None and base.result is not None and base.score > 0 and not math.isnan(t.score):
            gain = f"{(t.score / base.score - 1):+.1%}"
        rows.append([str(rank), what, fmt_ms(t.score), gain, fmt_ms(r.ttft.p50), fmt_ms(r.ttft.p99),
                     fmt_pct(r.hit_rate), f"{r.completed}/{r.requests}"])
    lines = [
        "# Tuning report", "",
        f"Command: `{command}`", "",
        f"{len(outcome.trials)} trials ({outcome.order}, grid of {outcome.grid_size}) in "
        f"{outcome.elapsed_s:.1f} s of a {outcome.budget_s:g} s budget; objective {outcome.objective} "
        "(simulated ms, lower is better; trial 0 is the base config).", "",
        table(["rank", "settings", f"{outcome.objective} ms", "vs base", "TTFT p50 ms", "TTFT p99 ms",
               "prefix hit rate", "completed"], rows),
    ]
    return "\n".join(lines) + "\n"


def winning_config(outcome: TuneOutcome, command: str) -> str:
    best = outcome.best
    if best is None:
        raise SearchError("no trial completed; nothing to write")
    what = ", ".join(f"{k}={v}" for k, v in best.settings) or "the base config (nothing beat it)"
    r = best.result
    assert r is not None
    head = (f"# Written by: {command}\n"
            f"# Best of {len(outcome.trials)} trials: {what}\n"
            f"# {outcome.objective} {fmt_ms(best.score)} ms simulated, TTFT p50 {fmt_ms(r.ttft.p50)} ms, "
            f"p99 {fmt_ms(r.ttft.p99)} ms, prefix hit rate {fmt_pct(r.hit_rate)}\n")
    return head + best.config_text
