"""The TTFT speed factor from observations with nothing pending ahead (commit 014e813), against
the rule before it (27b2d68), on predictor states saved by `epp bench latency`.

    PYTHONPATH=. .venv/bin/python docs/bench-results/latency-2026-12-03-speed-clean.py \\
        docs/bench-results/latency-states-2026-12-03/*.json.gz

Each state is the predicted-latency row's predictor at the end of a run: its windows hold the
warm-up's observations (loaded at the row's start) followed by the measured phase's, which are
the last len(errors) rows of each pod. Per state and rule:
- the slow pod's TTFT speed over the median of the fast pods' (its prefill is 2x slower), on
  the warm-up window (what the measured phase starts from) and on the whole window;
- TTFT MAPE per pod fitting on the older 3/4 of each pod's window and predicting the newest
  quarter with predict().
docs/latency-routing.md ("A floor on TTFT, and the speed of clean observations") cites the
output, the .txt beside this file.
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys
from typing import Any

import numpy as np

import epp.latency.predictor as predictor
from epp.bench.workloads import HETEROGENEOUS_SLOW_POD

_current_speed = predictor._speed


def _previous_speed(coef: tuple[float, ...], x: Any, y: Any, offset: Any = None) -> float:
    """_speed as of 27b2d68 (the rest of the predictor as now): every observation the pooled shape predicts work for."""
    if len(y) < predictor.MIN_SPEED_SAMPLES:
        return 1.0
    raw = x @ np.asarray(coef)
    predicted = np.maximum(raw, predictor._MIN_Y)
    own = y if offset is None else np.maximum(y - offset, predictor._MIN_Y)
    informative = raw > predictor._MIN_Y
    if np.count_nonzero(informative) >= predictor.MIN_SPEED_SAMPLES:
        own, predicted = own[informative], predicted[informative]
    return float(np.clip(np.median(own / predicted), 0.1, 10.0))


def _read(path: str) -> dict[str, Any]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)  # type: ignore[no-any-return]


def _fit(state: dict[str, Any], part: str) -> tuple[predictor.LatencyPredictor, dict[str, Any]]:
    """A predictor fitted on part of each pod's window: "warm" (the warm-up's observations),
    "all", or "older" (the older 3/4); returns it and the held-out rows per pod."""
    p = predictor.LatencyPredictor()
    held: dict[str, Any] = {}
    for target in ("ttft", "tpot"):
        for pod, rows in state["samples"][target].items():
            if part == "warm":
                cut = len(rows) - sum(1 for e in state["errors"].get(pod, []) if e[1] == target)
            elif part == "older":
                cut = len(rows) * 3 // 4
            else:
                cut = len(rows)
            for x, y in rows[:cut]:
                p.observe(target, pod, x, y)
            if target == "ttft":
                held[pod] = rows[cut:]
    p.refit()
    return p, held


def _slow_over_fast(p: predictor.LatencyPredictor) -> float:
    slow = f"vllm-{HETEROGENEOUS_SLOW_POD}"
    speeds = {key: m.ttft_speed for key, m in p.models.items() if key != predictor.POOLED}
    fast = [v for key, v in speeds.items() if not key.endswith(slow)]
    slow_speed = [v for key, v in speeds.items() if key.endswith(slow)]
    return slow_speed[0] / statistics.median(fast) if fast and slow_speed else float("nan")


def main(paths: list[str]) -> None:
    summary: dict[str, dict[str, list[float]]] = {}
    print("| state | rule | slow / fast speed, warm-up window | whole window | TTFT MAPE per pod, newest quarter |")
    print("|---|---|---|---|---|")
    for path in sorted(paths):
        state = _read(path)
        for rule, speed in (("speed rule of 27b2d68", _previous_speed), ("clean (014e813)", _current_speed)):
            predictor._speed = speed
            try:
                warm = _slow_over_fast(_fit(state, "warm")[0])
                whole = _slow_over_fast(_fit(state, "all")[0])
                p, held = _fit(state, "older")
            finally:
                predictor._speed = _current_speed
            mapes = {pod: statistics.median(abs(p.predict(pod, x)[0] - y) / y for x, y in rows)
                     for pod, rows in sorted(held.items()) if rows}
            s = summary.setdefault(rule, {"warm": [], "whole": [], "mape": []})
            s["warm"].append(warm)
            s["whole"].append(whole)
            s["mape"].extend(mapes.values())
            name = path.rsplit("/", 1)[-1].split(".state.json")[0]
            print(f"| {name} | {rule} | {warm:.2f}x | {whole:.2f}x | "
                  + ", ".join(f"{pod.rsplit('/', 1)[-1]} {m:.0%}" for pod, m in mapes.items()) + " |")
    print()
    for rule, s in summary.items():
        print(f"{rule}: slow/fast speed, warm-up windows {min(s['warm']):.2f}-{max(s['warm']):.2f}x, "
              f"whole windows {min(s['whole']):.2f}-{max(s['whole']):.2f}x; pods over 20% TTFT MAPE "
              f"{sum(m > 0.2 for m in s['mape'])} of {len(s['mape'])}, median {statistics.median(s['mape']):.1%}")


if __name__ == "__main__":
    main(sys.argv[1:])
