"""What the EPP estimates of a request's new prompt tokens, and how long the slow pod's engine
steps take, from a traced `epp bench latency` run.

    git apply docs/bench-results/latency-2026-12-04-trace.patch   # a temporary trace, not kept
    EPP_DEV_TRACE=/tmp/trace.jsonl python -m epp bench latency --loads 0.9 --duration 60 \\
        --warmup 40 --seed 3 --routers epp-latency
    python3 docs/bench-results/latency-2026-12-04-step-trace.py /tmp/trace.jsonl

The patch makes the latency runtime write one JSON line per finished request: its pod, the
new prompt tokens the EPP estimated (`est_new`, k tokens), the prompt and cached tokens the
pod reported in the usage, its dispatch and first-byte times. The trace of the 04:16 UTC run
(commit 49875a7) is `latency-2026-12-04T0416-trace.jsonl.gz`.

Part 1: the EPP's new-token estimate against the pod's own count (prompt - cached).
Part 2: the slow pod's steps. First bytes within 20 ms are one step end. A step is
"back to back" when every request whose first byte came at its end was sent before the
previous end: it then started at that end. Its time is compared with the simulator's step
shape (epp/sim/config.py: 8 x (6.5 ms + 0.055 ms per prefill token); the slow pod's
slowdown is 8, and the decodes' 0.07 ms each are left out), with the pod's own token count.
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys


def main(path: str) -> None:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    rows = [r for r in rows if r["fb"] and r["prompt"] is not None]
    print("| pod | requests | chats | est - true new tokens, median (p10, p90) | off by > 300 tokens |")
    print("|---|---|---|---|---|")
    for pod in sorted({r["pod"] for r in rows}):
        chats = [r for r in rows if r["pod"] == pod and r["prompt"] < 4000]
        diff = sorted(r["est_new"] * 1000 - (r["prompt"] - (r["cached"] or 0)) for r in chats)
        requests = sum(r["pod"] == pod for r in rows)
        print(f"| {pod} | {requests} | {len(chats)} | {statistics.median(diff):.0f} "
              f"({diff[len(diff) // 10]:.0f}, {diff[9 * len(diff) // 10]:.0f}) | {sum(abs(d) > 300 for d in diff)} |")
    slow = sorted((r for r in rows if r["pod"].endswith("vllm-0")), key=lambda r: r["fb"])
    groups: list[list[dict[str, float]]] = []
    for r in slow:
        if groups and r["fb"] - groups[-1][-1]["fb"] < 0.02:
            groups[-1].append(r)
        else:
            groups.append([r])
    ratios = []
    for prev, group in zip(groups, groups[1:]):
        start = prev[0]["fb"]
        tokens = sum(r["prompt"] - (r["cached"] or 0) for r in group)
        if max(r["disp"] for r in group) < start and tokens < 8192:
            ratios.append((group[0]["fb"] - start) / (8 * (6.5 + 0.055 * tokens) / 1000))
    ratios.sort()
    print()
    p10, p90 = ratios[len(ratios) // 10], ratios[9 * len(ratios) // 10]
    print(f"slow pod: {len(ratios)} back-to-back steps; time / the simulator's step shape: median "
          f"{statistics.median(ratios):.2f}, p10 {p10:.2f}, p90 {p90:.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
