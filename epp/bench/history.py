"""The history of the full `make bench` runs, generated from their committed raw results.

    python -m epp bench history                               # markdown on stdout
    python -m epp bench history --out docs/bench-history.md   # the committed page

A full run is a JSON in docs/bench-results/ named exactly `YYYY-MM-DD-HHMM-<7-hex commit>.json`
(the name `epp bench` gives its raw results) that has routing phases and an overhead section.
Every other JSON there (side-by-side runs with a suffix, single benchmarks) is not counted. Each
run's checks are those of epp.bench.report.all_checks on its raw results: the verdict logic of the
report, applied by the current code to every run. A file that cannot be read is skipped with a
one-line note in the output.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from epp.bench.report import TARGET_FAMILIES, TargetCheck, all_checks, fmt_ratio, table

FULL_RUN_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})-(\d{2})(\d{2})-([0-9a-f]{7})\.json$")
DEFAULT_LAST = 5
# What a file of an unexpected shape raises while it is read or judged.
_MALFORMED = (ArithmeticError, AttributeError, IndexError, KeyError, TypeError)
_BASELINE, _HETEROGENEOUS, _ROUND_ROBIN, _AHEAD_OF, _ADDED, _DECISIONS, _LONG_PROMPTS, _IDLE = (
    prefix for prefix, _ in TARGET_FAMILIES)


@dataclass(slots=True)
class RunSummary:
    """One full run: when, which commit, and every check of the report on its results."""

    path: Path
    when: dt.datetime  # UTC
    commit: str
    quick: bool
    checks: list[TargetCheck]

    @property
    def measured(self) -> list[TargetCheck]:
        return [c for c in self.checks if not math.isnan(c.value)]

    @property
    def met(self) -> int:
        return sum(1 for c in self.measured if c.met)

    @property
    def missed(self) -> list[TargetCheck]:
        return [c for c in self.measured if not c.met]

    @property
    def unmeasured(self) -> int:
        return len(self.checks) - len(self.measured)


@dataclass(slots=True)
class History:
    runs: list[RunSummary]  # in time order
    notes: list[str] = field(default_factory=list)  # one line per skipped file
    others: list[str] = field(default_factory=list)  # JSON files that are not named like a full run


def _stamp(name: str) -> tuple[dt.datetime, str] | None:
    m = FULL_RUN_NAME.match(name)
    if m is None:
        return None
    try:
        when = dt.datetime.strptime(f"{m[1]} {m[2]}:{m[3]}", "%Y-%m-%d %H:%M").replace(tzinfo=dt.UTC)
    except ValueError:
        return None  # e.g. month 13: not a name `epp bench` writes
    return when, m[4]


def _run_date(date: object) -> dt.datetime | None:
    """RunInfo.date ('2026-12-02 06:50 UTC') as a UTC datetime; None when absent or unreadable."""
    if not isinstance(date, str):
        return None
    try:
        return dt.datetime.strptime(date.strip(), "%Y-%m-%d %H:%M UTC").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def load_run(path: Path) -> RunSummary:
    """One full run's summary; ValueError (one line) when the file is not a readable full run."""
    from epp.bench.results import load_results

    stamp = _stamp(path.name)
    if stamp is None:
        raise ValueError(f"{path.name}: not named like a full run (YYYY-MM-DD-HHMM-<commit>.json)")
    try:
        outcomes, overhead, info = load_results(path)
    except ValueError as e:  # load_results' own: unreadable, not JSON, a field missing or mistyped
        reason = str(e).removeprefix(f"{path}: ")
        raise ValueError(f"{path.name}: skipped, {reason}") from None
    except _MALFORMED as e:  # a field of an unexpected shape that load_results does not catch
        raise ValueError(f"{path.name}: skipped, not a benchmark results file: {type(e).__name__}: {e}") from None
    if not outcomes:
        raise ValueError(f"{path.name}: skipped, no routing phases (not a full run)")
    if overhead is None:
        raise ValueError(f"{path.name}: skipped, no overhead section (not a full run)")
    try:
        checks = all_checks(outcomes, overhead)
    except (*_MALFORMED, ValueError) as e:
        raise ValueError(f"{path.name}: skipped, its checks could not be evaluated: {type(e).__name__}: {e}") from None
    commit = str(info.commit) if info.commit else stamp[1]
    return RunSummary(path, _run_date(info.date) or stamp[0], commit, bool(info.quick), checks)


def load_history(directory: Path) -> History:
    """Every full run in `directory`, oldest first; files that fail to load become notes."""
    if not directory.is_dir():
        return History([], [f"{directory}: no such directory"])
    runs: list[RunSummary] = []
    notes: list[str] = []
    others: list[str] = []
    for path in sorted(directory.glob("*.json")):
        if _stamp(path.name) is None:
            others.append(path.name)
            continue
        try:
            runs.append(load_run(path))
        except ValueError as e:
            notes.append(" ".join(str(e).split()))  # one line, whatever the error said
    runs.sort(key=lambda r: (r.when, r.path.name))
    return History(runs, notes, others)


# --- compact text of a check ---------------------------------------------------------------------

def _deciding_part(check: TargetCheck) -> str:
    """The part of `measured` the verdict is on: the one ending in the check's value as a ratio
    ('p50 452.4 vs vr-rr 430.9 ms = 1.05x' of 'p50 ...; p99 ...'), else the first part."""
    parts = [p.strip() for p in check.measured.split(";")]
    ratio = f"= {fmt_ratio(check.value)}"
    return next((p for p in parts if p.endswith(ratio)), parts[0])


def _short_value(check: TargetCheck) -> str:
    """'p50 1.05x', 'envoy-rr 0.97x', '0.62x' for ratios; '1.309 ms', '766' for overhead."""
    part = _deciding_part(check)
    if " = " in part:
        label, ratio = part.split()[0], part.rsplit(" = ", 1)[1]
        return ratio if label[:1].isdigit() else f"{label} {ratio}"
    return part.split(" (")[0]


# Each target family's few words ({where}: the check's place; {peer}: the router it is compared to).
_SHORT_WHERE = (
    (_BASELINE, "{where} vs baselines"),
    (_HETEROGENEOUS, "{where} p99 vs round robin"),
    (_ROUND_ROBIN, "{where} vs round robin"),
    (_AHEAD_OF, "{where} vs {peer}"),
    (_ADDED, "overhead c=1"),
    (_DECISIONS, "decisions/s per core @ {where}"),
    (_LONG_PROMPTS, "long prompts @ {where}"),
    (_IDLE, "idle scrape cost @ {where}"),
)


def _short_where(check: TargetCheck) -> str:
    """Which check, in a few words: the place plus what it compares when the place is shared."""
    t, where = check.target, check.where
    for prefix, words in _SHORT_WHERE:
        if t.startswith(prefix):
            peer = (t.removeprefix(prefix).split() or [""])[0]  # 'vr-cache' of 'shared prefix: ahead of vr-cache ...'
            return words.format(where=where, peer=peer)
    return f"{t} @ {where}"


def short_check(check: TargetCheck) -> str:
    """'no-sharing @ 9 req/s vs baselines (p50 1.05x)', 'overhead c=1 (1.309 ms)'."""
    return f"{_short_where(check)} ({_short_value(check)})"


# --- markdown ------------------------------------------------------------------------------------

def _when(run: RunSummary) -> str:
    return run.when.strftime("%Y-%m-%d %H:%M")


def _link(run: RunSummary, text: str, link_base: Path | None) -> str:
    if link_base is None:
        return text
    return f"[{text}]({Path(os.path.relpath(run.path.resolve(), link_base.resolve())).as_posix()})"


def _met(run: RunSummary) -> str:
    out = f"{run.met} of {len(run.measured)}"
    return out + (f" ({run.unmeasured} not measured)" if run.unmeasured else "")


def runs_table(runs: Sequence[RunSummary], link_base: Path | None = None) -> str:
    rows = [[_link(r, _when(r), link_base) + (" (quick)" if r.quick else ""), f"`{r.commit}`", _met(r),
             "; ".join(short_check(c) for c in r.missed) or "none"] for r in runs]
    return table(["run (UTC)", "commit", "met", "missed"], rows)


def _key(check: TargetCheck) -> tuple[str, str]:
    return check.target, check.where


def _mark(check: TargetCheck | None) -> str:
    if check is None or math.isnan(check.value):
        return "-"
    return "met" if check.met else "**MISSED**"


def checks_table(runs: Sequence[RunSummary]) -> str:
    """One row per check (target + where) over `runs`: met / MISSED / - (not measured) per run."""
    by_run = [{_key(c): c for c in r.checks} for r in runs]
    keys = list(dict.fromkeys(_key(c) for r in runs for c in r.checks))
    rows = []
    for key in keys:
        cells = [_mark(checks.get(key)) for checks in by_run]
        measured = sum(1 for cell in cells if cell != "-")
        rows.append([key[0], key[1], *cells, f"{sum(1 for cell in cells if cell == 'met')} of {measured}"])
    header = ["target", "where", *(f"{r.when:%m-%d %H:%M} `{r.commit}`" for r in runs), "met in"]
    return table(header, rows)


def history_markdown(history: History, *, command: str, source: str, last: int = DEFAULT_LAST,
                     link_base: Path | None = None) -> str:
    """The page: where it comes from, one row per run, then every check over the last `last` runs.
    `source` names the directory as the page should show it; `link_base` (the page's directory)
    makes each run a link to its JSON."""
    runs = history.runs
    recent = runs[-last:] if last > 0 else []
    others = (f" The other {len(history.others)} JSON files there (side-by-side runs, single benchmarks) are "
              "not full runs and are not counted." if history.others else "")
    lines = [
        "# Benchmark history",
        "",
        f"Generated by `{command}` from the full `make bench` runs in {source}: the files named "
        f"`YYYY-MM-DD-HHMM-<commit>.json` that have routing phases and an overhead section "
        f"({len(runs)} runs).{others} Every verdict is recomputed from the run's raw results by the current "
        "report code (epp.bench.report.all_checks), so a run's row can differ from what its own report said "
        "when the targets changed since. 'met' counts the checks met of those measured; '-' is not measured.",
        "",
    ]
    if history.notes:
        lines += ["Skipped files:", "", *(f"- {note}" for note in history.notes), ""]
    if not runs:
        lines.append("No full run found.")
        return "\n".join(lines) + "\n"
    lines += [
        "## Every full run",
        "",
        runs_table(runs, link_base),
        "",
        f"## Every check over the last {len(recent)} runs",
        "",
        checks_table(recent),
    ]
    return "\n".join(lines) + "\n"
