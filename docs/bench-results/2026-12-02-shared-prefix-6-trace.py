"""Shared prefix @ 6 cell (make bench settings: same seeds, pods, time scale): per router and
run, every request's pod, session, prompt and cached tokens, TTFT, and what its pod was already
prefilling when it was sent (requests without their first token yet, seen from the client, and
their uncached prompt tokens). Run index 1 (seed 2) is the run the default lost to vllm-router
cache_aware in the full bench of 06:50 and in the 5-run side by side of 08:00 (2026-12-02).
Bounded: one ~10-model-second phase per router and run.

    PYTHONPATH=. .venv/bin/python docs/bench-results/2026-12-02-shared-prefix-6-trace.py \
        vr-cache,epp-default 0,1 /tmp/sp6.json

Writes the per-request records (times in wall seconds) to the JSON file.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import sys
import tempfile

from epp.bench.cli import add_parser, build_plan
from epp.bench.client import run_phase
from epp.bench.routers import router_by_key, running_router
from epp.bench.runner import phase_workload

routers = sys.argv[1].split(",")
repeats = [int(x) for x in sys.argv[2].split(",")]
out = sys.argv[3]
parser = argparse.ArgumentParser()
add_parser(parser.add_subparsers())
args = parser.parse_args(["bench", "--workloads", "shared-prefix", "--rates", "6",
                          "--run-dir", tempfile.mkdtemp(prefix="sp6-")])
plan = build_plan(args)
phase = next(p for p in plan.phases if p.workload == "shared-prefix" and p.params.rate == 6)
dump = []
for r in repeats:
    wl = phase_workload(phase, r)
    session = {q.index: q.session for q in wl.requests}
    for key in routers:
        with running_router(router_by_key(key), plan.row, f"sp6-{key}-{r}") as router:
            res = asyncio.run(run_phase(router.url, wl, plan.row.time_scale,
                                        wl.span_s * plan.row.time_scale + plan.drain_s))
        reqs = [{"i": x.index, "sent": round(x.sent_at, 4), "ttft": round(x.ttft_s, 4), "pod": x.pod,
                 "session": session[x.index], "prompt": x.prompt_tokens, "cached": x.cached_tokens}
                for x in res.results if x.ok]
        dump.append({"router": key, "run": r, "requests": reqs})
        ttfts = sorted(q["ttft"] for q in reqs)
        per_pod = collections.Counter(q["pod"] for q in reqs)
        uncached = collections.Counter()
        for q in reqs:
            uncached[q["pod"]] += q["prompt"] - q["cached"]
        hit = sum(q["cached"] for q in reqs) / max(1, sum(q["prompt"] for q in reqs))
        print(f"{key} run {r}: {len(reqs)} ok, TTFT p50 {statistics.median(ttfts) * 1000:.0f} ms, "
              f"p90 {ttfts[int(0.9 * (len(ttfts) - 1))] * 1000:.0f} ms, hit {hit:.1%}")
        print(f"   requests per pod {dict(sorted(per_pod.items()))}; uncached prompt tokens per pod "
              f"{dict(sorted(uncached.items()))}")
        # The slowest: what their pod was prefilling when each was sent.
        for q in sorted(reqs, key=lambda q: -q["ttft"])[:8]:
            busy = [p for p in reqs if p["pod"] == q["pod"] and p["sent"] < q["sent"] < p["sent"] + p["ttft"]]
            print(f"   ttft {q['ttft'] * 1000:6.0f} ms at {q['sent']:5.2f} s on {q['pod']} ({q['session']}, "
                  f"{q['prompt'] - q['cached']} uncached of {q['prompt']}); its pod was prefilling {len(busy)} "
                  f"({sum(p['prompt'] - p['cached'] for p in busy)} uncached tokens)")
json.dump(dump, open(out, "w"))
