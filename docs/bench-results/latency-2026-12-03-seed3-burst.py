"""What ran beside given requests of an `epp bench latency` run, on their pod.

    .venv/bin/python docs/bench-results/latency-2026-12-03-seed3-burst.py \\
        docs/bench-results/latency-2026-12-03T0643-055b4a1.json 120 100 150 180

For each request number: its prompt tokens, arrival, pod, TTFT and TTFT alone on an idle
pod; then every other request on that pod still in flight at its arrival or arriving before
its first byte, with arrival, first byte and (estimated from its TPOT) end of decode. Arrivals
and prompt sizes are rebuilt from the run's seed, as epp.bench.latency_placement does.
docs/latency-routing.md ("Queue time in hindsight, and a TPOT floor") cites its output, the
.txt beside it.
"""

from __future__ import annotations

import json
import sys

from epp.bench.latency import LatencyBenchSettings, build_workload, prompt_tokens
from epp.bench.latency_placement import idle_ttft_s


def main(path: str, numbers: list[int]) -> None:
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    st = result["settings"]
    settings = LatencyBenchSettings(max_tokens=st["max_tokens"], seed=st["seed"], duration_s=st["duration_s"])
    phase = result["phases"][0]
    workload, _ = build_workload(settings, phase["load"], st["duration_s"], st["seed"], "placement")
    tokens = prompt_tokens(workload)
    arrival = [r.arrival_s for r in workload.requests]
    row = next(r for r in phase["rows"] if r["router"] == "epp-latency")
    rows = {p["i"]: p for p in row["per_request"]}
    for n in numbers:
        p, at = rows[n], arrival[n]
        first_byte = at + p["ttft_s"]
        print(f"#{n} {p['kind']} {tokens[n]} tokens at {at:.2f} s -> {p['pod']}: TTFT {p['ttft_s']:.2f} s "
              f"(alone on an idle pod {idle_ttft_s(tokens[n], st['slowdown']):.2f} s)")
        for i in sorted(rows, key=lambda k: arrival[k]):
            q = rows[i]
            if q["pod"] != p["pod"] or i == n or not q["ok"]:
                continue
            q_first = arrival[i] + q["ttft_s"]
            q_end = q_first + (q["tpot_s"] or 0.0) * (st["max_tokens"] - 1)
            if q_end > at and arrival[i] < first_byte:
                print(f"   #{i} {q['kind']:5s} {tokens[i]:6d} tokens at {arrival[i]:6.2f} s, first byte {q_first:6.2f} s, "
                      f"decode ends ~{q_end:6.2f} s, SLO TTFT {q['slo_ttft_s']}")


if __name__ == "__main__":
    main(sys.argv[1], [int(a) for a in sys.argv[2:]])
