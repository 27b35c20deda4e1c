"""How often a chat turn went to the pod that served its conversation's previous turn, per run.

    python docs/bench-results/latency-2026-12-04-prefix/sticky.py > docs/bench-results/latency-2026-12-04-prefix/sticky.txt

The measured phase's workload is rebuilt from the seed (build_workload with the bench's
nonce, `load0.9`); a turn's conversation is its first user message. "sticky": the share of
turns after the first that went to the previous turn's pod (which holds the conversation's
prefix, unless evicted)."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from epp.bench.latency import LatencyBenchSettings, build_workload

HERE = Path(__file__).resolve().parent


def main() -> None:
    workloads = {}
    out: dict[str, list[float]] = defaultdict(list)
    for path in sorted(HERE.glob("*-s*-r*/*.json")):
        arm, seed_s, rnd = path.parent.name.split("-")
        seed = int(seed_s[1:])
        if seed not in workloads:
            workloads[seed], _ = build_workload(LatencyBenchSettings(seed=seed), 0.9, 60.0, seed, "load0.9")
        requests = workloads[seed].requests
        [row] = json.loads(path.read_text())["phases"][0]["rows"]
        last_pod: dict[str, str] = {}
        stuck = moved = 0
        for r in row["per_request"]:
            req = requests[r["i"]]
            if r["kind"] != "chat":
                continue
            conv = next(m["content"] for m in req.messages if m["role"] == "user")
            before = last_pod.get(conv)
            if before is not None:
                if r["pod"] == before:
                    stuck += 1
                else:
                    moved += 1
            last_pod[conv] = r["pod"]
        turns = stuck + moved
        if turns:
            out[arm].append(100 * stuck / turns)
        print(f"{path.parent.name}: later turns {turns}, to the previous turn's pod {stuck} "
              f"({100 * stuck / turns:.0f}%)" if turns else f"{path.parent.name}: no later turns")
    for arm, rows in out.items():
        print(f"{arm}: median share to the previous turn's pod {statistics.median(rows):.0f}% ({len(rows)} runs)")


if __name__ == "__main__":
    main()
