"""Heterogeneous @ 6 cell (make bench settings: same seeds, pods, time scale): for each router
and run, TTFT p50 / about-p99, and for every request sent to the slow pod (vllm-0) how many
requests it already held that had not had their first token yet ("prefilling", seen from
the client). A slow pod sent a request while 2+ are prefilling answers it late: that is where
the cell's p99 comes from. Bounded: one 30-model-second phase per router and run.

    PYTHONPATH=. .venv/bin/python docs/bench-results/2026-12-02-heterogeneous-state-at-send.py \
        envoy-lr,epp-default 0,1,2,3,4 /tmp/state.json

Writes per-request records (sent, ttft, e2e in wall seconds; pod) to the JSON file.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import statistics
import sys
import tempfile

from epp.bench.cli import add_parser, build_plan
from epp.bench.client import run_phase
from epp.bench.routers import router_by_key, running_router
from epp.bench.runner import phase_workload
from epp.bench.workloads import pod_profile

SLOW_POD = "vllm-0"


def prefilling_at_send(reqs: list[dict[str, float | str]], req: dict[str, float | str]) -> int:
    sent = float(req["sent"])
    return sum(1 for q in reqs if q["pod"] == req["pod"] and float(q["sent"]) < sent
               < float(q["sent"]) + float(q["ttft"]))


routers = sys.argv[1].split(",")
repeats = [int(x) for x in sys.argv[2].split(",")]
out = sys.argv[3]
parser = argparse.ArgumentParser()
add_parser(parser.add_subparsers())
args = parser.parse_args(["bench", "--workloads", "heterogeneous", "--run-dir", tempfile.mkdtemp(prefix="hetero-")])
plan = build_plan(args)
phase = next(p for p in plan.phases if p.workload == "heterogeneous")
row = dataclasses.replace(plan.row, pod_slowdown=pod_profile("heterogeneous"))
dump = []
p99s: dict[str, list[float]] = collections.defaultdict(list)
at_send: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
for r in repeats:
    wl = phase_workload(phase, r)
    for key in routers:
        with running_router(router_by_key(key), row, f"state-{key}-{r}") as router:
            res = asyncio.run(run_phase(router.url, wl, row.time_scale, wl.span_s * row.time_scale + plan.drain_s))
        reqs: list[dict[str, float | str]] = [
            {"sent": round(x.sent_at, 4), "ttft": round(x.ttft_s, 4), "e2e": round(x.e2e_s, 4), "pod": x.pod}
            for x in res.results if x.ok]
        dump.append({"router": key, "run": r, "requests": reqs})
        ttfts = sorted(float(x["ttft"]) for x in reqs)
        p99 = ttfts[int(0.99 * (len(ttfts) - 1))]
        p99s[key].append(p99)
        for x in reqs:
            if x["pod"] == SLOW_POD:
                at_send[key][min(prefilling_at_send(reqs, x), 3)] += 1
        print(f"== {key} run {r}: {len(reqs)} ok, TTFT p50 {ttfts[len(ttfts) // 2]:.3f} p99~{p99:.3f} s (wall)",
              flush=True)
with open(out, "w") as f:
    json.dump(dump, f)
for key in routers:
    c = at_send[key]
    print(f"{key}: p99 median {statistics.median(p99s[key]):.3f} s; slow-pod sends {sum(c.values())}, "
          f"with 0/1/2/3+ already prefilling: {[c[k] for k in range(4)]}")
