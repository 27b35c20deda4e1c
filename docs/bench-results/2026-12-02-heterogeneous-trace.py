"""Per-request trace of the heterogeneous @ 6 cell (make bench settings: same workload seeds, pods and time
scale) for chosen routers and runs: each run's TTFT p50, about-p99, requests per pod, and its six slowest
requests (wall seconds; the report's model seconds are wall / 0.5). Bounded: one phase per router and run.

    PYTHONPATH=. .venv/bin/python docs/bench-results/2026-12-02-heterogeneous-trace.py epp-default,envoy-lr 0,1,2
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile

from epp.bench.cli import add_parser, build_plan
from epp.bench.client import run_phase
from epp.bench.routers import router_by_key, running_router
from epp.bench.runner import phase_workload
from epp.bench.workloads import pod_profile

routers = sys.argv[1].split(",")
repeats = [int(x) for x in sys.argv[2].split(",")]
parser = argparse.ArgumentParser()
add_parser(parser.add_subparsers())
run_dir = tempfile.mkdtemp(prefix="hetero-trace-")
args = parser.parse_args(["bench", "--workloads", "heterogeneous", "--run-dir", run_dir])
plan = build_plan(args)
phase = next(p for p in plan.phases if p.workload == "heterogeneous")
row = dataclasses.replace(plan.row, pod_slowdown=pod_profile("heterogeneous"))
for r in repeats:
    wl = phase_workload(phase, r)
    for key in routers:
        spec = router_by_key(key)
        with running_router(spec, row, f"trace-{key}-{r}") as router:
            res = asyncio.run(run_phase(router.url, wl, row.time_scale, wl.span_s * row.time_scale + plan.drain_s))
        ok = [x for x in res.results if x.ok]
        ttfts = sorted(x.ttft_s for x in ok)
        p99 = ttfts[int(0.99 * (len(ttfts) - 1))] if ttfts else float("nan")
        share = {}
        for x in ok:
            share[x.pod] = share.get(x.pod, 0) + 1
        print(f"== run {r} (seed +{r}) {key}: {len(ok)} ok, TTFT p50 {ttfts[len(ttfts) // 2]:.3f} "
              f"p99~{p99:.3f} s; pods {dict(sorted(share.items()))}")
        for x in sorted(ok, key=lambda x: -x.ttft_s)[:6]:
            print(f"   ttft {x.ttft_s:6.3f} s  sent {x.sent_at:6.2f} s  pod {x.pod}  "
                  f"prompt {x.prompt_tokens}  out {x.output_tokens}")
        sys.stdout.flush()
