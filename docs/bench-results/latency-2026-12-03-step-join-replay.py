"""Offline replay of each pod's virtual prefill queue under three charging rules.

    python3 docs/bench-results/latency-2026-12-03-step-join-replay.py \\
        docs/bench-results/latency-states-2026-12-03-pm/*.state.json.gz

Input: predictor states saved at the end of `epp bench latency` runs (the predicted-latency
row). For each pod, the TTFT observations that have a recorded prediction (the measured
phase) give each request's features, its dispatch time (first byte - TTFT) and its first byte.
The replay rebuilds the pod's virtual FCFS queue from those events (charges at dispatch,
corrections at first bytes, the overdue-head guard, as epp/latency/runtime.py does) and
predicts each TTFT with the state's final model (queue wait + the pod's own part, floored at
its TTFT floor). Rules:

- whole step: every request is charged its idle service time (the code before 51f7c18);
- step less: a request sent while others are pending is charged its service less one engine
  step, the pod's TTFT floor (e69f1bd, reverted);
- step join: a request sent while the last queued step has not started joins it: it is
  charged its tokens' share of a step (per-token time x new tokens), and predicted queue wait
  plus that share (51f7c18).

"recorded" is the MAPE of the predictions the run made. The replay uses the final model for
every request (the run refit it every 0.5 s), so "whole step" only approximates "recorded";
compare the rules with each other.
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys
from typing import Any

NEW, PENDING, QUEUE = 1, 2, 3
RULES = ("whole step", "step less", "step join")


def load(path: str, pod: str) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    with gzip.open(path) as f:
        state = json.load(f)
    samples = state["samples"]["ttft"].get(pod, [])
    errors = [e for e in state["errors"].get(pod, []) if e[1] == "ttft"]
    n = min(len(samples), len(errors))
    reqs = []
    # Samples and error pairs are appended together per observation: the last n match.
    for (x, y), (at, _target, predicted, actual) in zip(samples[len(samples) - n:], errors[len(errors) - n:]):
        assert abs(y - actual) < 1e-9
        at += 1000.0  # times are relative to the save (negative); keep 0 free as "no queue"
        reqs.append({"x": x, "y": y, "fb": at, "disp": at - y, "recorded": predicted})
    reqs.sort(key=lambda r: r["disp"])
    return state["models"][pod], state["models"][""], reqs


def replay(model: dict[str, Any], pooled: dict[str, Any], reqs: list[dict[str, Any]], rule: str) -> float:
    floor, cover = model["ttftFloor"], model["cover"]

    def coefficients(ktok: float, queue: float) -> tuple[list[float], float]:
        if model["ttft"] is not None and ktok <= 1.25 * cover[0] + 0.5 and queue <= 1.25 * cover[1] + 0.5:
            return model["ttft"], 1.0
        return pooled["ttft"], model["ttftSpeed"]

    def service(ktok: float) -> float:
        c, speed = coefficients(ktok, 0.0)
        return max(floor, speed * max(0.0, c[0] + c[NEW] * ktok))

    def share(ktok: float) -> float:
        c, speed = coefficients(ktok, 0.0)
        return speed * max(0.0, c[NEW] * ktok)

    def own(x: list[float], queue: float) -> float:
        c, speed = coefficients(x[NEW], queue)
        rest = list(x)
        rest[PENDING] = rest[QUEUE] = 0.0
        return speed * max(0.0, sum(a * b for a, b in zip(c, rest)))

    events = sorted([(r["disp"], 1, i) for i, r in enumerate(reqs)] + [(r["fb"], 0, i) for i, r in enumerate(reqs)])
    clear = step_start = head_since = 0.0
    order: list[int] = []
    charged: dict[int, float] = {}
    predicted: dict[int, float] = {}
    for t, is_dispatch, i in events:
        r = reqs[i]
        if is_dispatch:
            queue = max(0.0, clear - t) if clear else 0.0
            if clear and order:
                late = t - head_since - charged[order[0]]
                if late > 0 and charged[order[0]] > 0:
                    queue = late * min(1.0, late / charged[order[0]]) + sum(charged[j] for j in order[1:])
            full = service(r["x"][NEW])
            joins = rule == "step join" and bool(order) and step_start > t
            if joins:
                charge = share(r["x"][NEW])
                predicted[i] = max(floor, queue + charge)
            else:
                charge = max(0.0, full - floor) if rule == "step less" and order else full
                predicted[i] = max(floor, queue + own(r["x"], queue))
            start = max(t, clear)
            if not joins:
                step_start = start
            charged[i] = charge
            clear = start + charge
            if not order:
                head_since = t
            order.append(i)
        elif i in order:
            before = clear
            if order[0] == i:
                clear = t + sum(charged[j] for j in order[1:])
                order.pop(0)
                head_since = t
            else:
                clear = max(t, clear - charged[i])
                order.remove(i)
            step_start = min(step_start + clear - before, clear)
            if not order:
                clear = step_start = 0.0
    return statistics.median(abs(predicted[i] - r["y"]) / r["y"] for i, r in enumerate(reqs))


def main(paths: list[str]) -> None:
    print("| state | pod | TTFTs | recorded | " + " | ".join(RULES) + " |")
    print("|---|---|---|---|" + "---|" * len(RULES))
    table: dict[str, list[float]] = {name: [] for name in ("recorded", *RULES)}
    slow: dict[str, list[float]] = {name: [] for name in table}
    for path in sorted(paths):
        with gzip.open(path) as f:
            pods = sorted(k for k in json.load(f)["models"] if k)
        for pod in pods:
            model, pooled, reqs = load(path, pod)
            if len(reqs) < 8:
                continue
            row = {"recorded": statistics.median(abs(r["recorded"] - r["y"]) / r["y"] for r in reqs)}
            row.update({rule: replay(model, pooled, reqs, rule) for rule in RULES})
            for name, value in row.items():
                table[name].append(value)
                if pod.endswith("vllm-0"):
                    slow[name].append(value)
            cells = " | ".join(f"{row[name]:.0%}" for name in table)
            print(f"| {path.split('/')[-1].split('.')[0]} | {pod} | {len(reqs)} | {cells} |")
    print()
    print("| TTFT MAPE | " + " | ".join(table) + " |")
    print("|---|" + "---|" * len(table))
    for label, values in (("all pods, median", table), ("slow pod (vllm-0), median", slow)):
        print(f"| {label} | " + " | ".join(f"{statistics.median(v):.0%}" for v in values.values()) + " |")
    for label, values in (("all pods, max", table), ("slow pod, max", slow)):
        print(f"| {label} | " + " | ".join(f"{max(v):.0%}" for v in values.values()) + " |")
    print("| pods over 20% | " + " | ".join(str(sum(x > 0.2 for x in v)) for v in table.values()) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
