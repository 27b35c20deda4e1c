"""The traced run (seed 2, 90%, the predicted-latency row at 5f375c4 with trace.patch applied,
16:20 UTC): what the latency scorer saw for the chats sent while every pod had a long prefill.

    gunzip -c docs/bench-results/latency-2026-12-04-carried/trace-s2-1620.jsonl.gz > /tmp/trace.jsonl
    python docs/bench-results/latency-2026-12-04-carried/trace.py /tmp/trace.jsonl

The run: `EPP_DEV_TRACE=/tmp/trace.jsonl python -m epp bench latency --loads 0.9 --duration 60
--warmup 40 --seed 2 --routers epp-latency`. The trace's clock is the EPP's monotonic clock;
OFFSET maps it to the workload's arrival times (request #30, 25,458 tokens, arrives at 7.52 s
and was dispatched at 28330.01).
"""

from __future__ import annotations

import json
import sys

OFFSET = 28322.49


def main() -> None:
    with open(sys.argv[1]) as f:
        records = [json.loads(line) for line in f]
    for r in records:
        t = r["t"] - OFFSET
        if not 10.4 <= t <= 13.0:
            continue
        if "dispatch" in r:
            print(f"  -> {r['dispatch']}, predicted TTFT {r['ttft']:.2f} s")
            continue
        print(f"{t:6.2f} s, prompt ~{r['prompt']} tokens, SLO {r['slo']}")
        for key in sorted(r["all"]):
            i = r["keys"].index(key) if key in r["keys"] else None
            cost = "-" if i is None else f"{r['costs'][i]:.3f}"
            score = "-" if i is None else f"{r['scores'][i]:.3f}"
            ttft, tpot = r["all"][key]
            print(f"    {key}: TTFT {ttft:.2f} s, TPOT {tpot * 1000:.0f} ms, queue wait {r['wait'][key]:.2f} s, "
                  f"pending {r['pending'][key]}, cost {cost}, score {score}")


if __name__ == "__main__":
    main()
