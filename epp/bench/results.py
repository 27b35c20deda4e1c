"""Raw benchmark results as JSON: written after every run, read back to re-render the report.

`python -m epp bench --from-results .run/bench/results.json` rewrites docs/benchmarks.md and
the plots from a previous run without rerunning anything (e.g. after a report change).
NaN (a metric with no samples) is stored as null.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from epp.bench.machine import MachineFacts
from epp.bench.overhead import DecisionLatency, LongPromptOverhead, OverheadResult, PoolOverhead
from epp.bench.report import RunInfo
from epp.bench.runner import PhaseOutcome, PhasePlan, RouterPhaseResult
from epp.bench.stats import Distribution
from epp.bench.workloads import WorkloadParams


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def save_results(path: Path, outcomes: list[PhaseOutcome], overhead: OverheadResult | None, info: RunInfo) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"info": info, "phases": outcomes, "overhead": overhead}
    path.write_text(json.dumps(to_jsonable(doc), indent=1))


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _distribution(doc: dict[str, Any]) -> Distribution:
    return Distribution(int(doc["count"]), _float(doc["mean"]), _float(doc["p50"]), _float(doc["p90"]),
                        _float(doc["p99"]))


def _build(cls: type[Any], doc: dict[str, Any], **nested: Any) -> Any:
    """cls(**doc) with float fields NaN-restored and `nested` values taking precedence."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in nested:
            kwargs[f.name] = nested[f.name]
        elif f.name in doc:
            value = doc[f.name]
            kwargs[f.name] = _float(value) if f.type in ("float", float) else value
    return cls(**kwargs)


def _row(doc: dict[str, Any]) -> RouterPhaseResult:
    spread = {k: [_float(v) for v in values] for k, values in doc.get("spread", {}).items()}
    row: RouterPhaseResult = _build(RouterPhaseResult, doc, ttft=_distribution(doc["ttft"]),
                                    itl=_distribution(doc["itl"]), e2e=_distribution(doc["e2e"]), spread=spread)
    return row


def _phase(doc: dict[str, Any]) -> PhaseOutcome:
    plan = PhasePlan(doc["plan"]["workload"], _build(WorkloadParams, doc["plan"]["params"]),
                     tuple(doc["plan"].get("routers", ())))
    phase: PhaseOutcome = _build(PhaseOutcome, doc, plan=plan, rows=[_row(r) for r in doc["rows"]],
                                 samples=[_row(r) for r in doc.get("samples", [])])
    return phase


def _overhead(doc: dict[str, Any] | None) -> OverheadResult | None:
    if doc is None:
        return None
    pools = [_build(PoolOverhead, p, **{k: _distribution(p[k]) for k in ("direct_c1", "epp_c1", "direct_cn",
                                                                         "epp_cn")})
             for p in doc["pools"]]
    decisions = [_build(DecisionLatency, d) for d in doc["decisions"]]
    longs = [_build(LongPromptOverhead, lp, direct=_distribution(lp["direct"]), epp=_distribution(lp["epp"]))
             for lp in doc.get("long_prompts", [])]
    return OverheadResult(pools, decisions, int(doc.get("body_bytes", 0)), str(doc.get("measured", "")),
                          longs, int(doc.get("repeats", 1)), float(doc.get("idle_seconds") or 0.0))


def load_results(path: Path) -> tuple[list[PhaseOutcome], OverheadResult | None, RunInfo]:
    try:
        doc = json.loads(path.read_text())
        info = _build(RunInfo, doc["info"], machine=_build(MachineFacts, doc["info"]["machine"]))
        return [_phase(p) for p in doc["phases"]], _overhead(doc.get("overhead")), info
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a benchmark results file: {type(e).__name__}: {e}") from None
