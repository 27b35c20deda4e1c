"""What explaining costs: `python -m epp.admin.bench [--decisions N] [--pods P]`.

Times, on the embedded default config and P idle pods with a shared-prefix workload:
- plain: Scheduler.schedule + pre_request (what every unsampled request pays);
- idle hook: DecisionExplainer.wants() with the admin API on and nobody watching (the only
  extra work an unsampled request does when the admin API is enabled);
- traced: the sampled path (schedule_traced + pre_request), i.e. a watched decision;
- explain: a full dry-run Explain (parse, traced cycle, Decision message), per call.
Single process, wall clock per decision, median of 5 rounds: noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from epp.admin.explain import schedule_traced
from epp.admin.feed import DecisionExplainer
from epp.admin.proto import pb
from epp.admin.service import AdminService, AdminState
from epp.config.loader import load_scheduler_config
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint, EndpointMetrics
from epp.datastore.inflight import SERVICE_KEY, InflightTracker
from epp.observability.decisions import DecisionBus
from epp.scheduling.registry import PluginContext
from epp.scheduling.types import LLMRequest

PREFIX = "You are a helpful assistant for a travel company; answer with itineraries. " * 6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m epp.admin.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--pods", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)

    ds = Datastore()
    for i in range(args.pods):
        ds.upsert_endpoint(Endpoint(name=f"pod-{i}", address="127.0.0.1", port=8000 + i,
                                    metrics=EndpointMetrics(waiting_queue_size=i % 3, updated_at=1.0)))
    ctx = PluginContext(ds, source="<bench>")
    ctx.services[SERVICE_KEY] = InflightTracker(ds)
    scheduler = load_scheduler_config(None, ctx).scheduler
    eps = ds.healthy_endpoints()
    reqs = [LLMRequest(request_id=str(i), model="m", target_model="m", prompt=f"{PREFIX} q{i % 50}")
            for i in range(args.decisions)]
    explainer = DecisionExplainer()
    service = AdminService(AdminState(ds, lambda: scheduler, DecisionBus(), explainer))
    body = json.dumps({"model": "m", "prompt": PREFIX + " q1"}).encode()

    def plain() -> None:
        for r in reqs:
            result, state = scheduler.schedule(r, eps)
            scheduler.pre_request(state, r, result)

    def idle_hook() -> None:
        for r in reqs:
            explainer.wants(r)

    def traced() -> None:
        for r in reqs:
            cycle = schedule_traced(scheduler, r, eps, dry_run=False)
            assert cycle.result is not None
            scheduler.pre_request(cycle.state, r, cycle.result)

    def explain() -> None:
        for _ in reqs:
            service.explain(pb.ExplainRequest(body=body))

    print(f"{args.pods} pods, {args.decisions} decisions per round, median of {args.rounds} rounds")
    print("| path | µs per decision |\n| --- | --- |")
    for name, fn in (("plain schedule + pre_request", plain), ("idle hook (admin on, nobody watching)", idle_hook),
                     ("traced (a watched decision)", traced), ("Explain (dry run, Decision message)", explain)):
        print(f"| {name} | {_median_us(fn, args.rounds, args.decisions):.1f} |")
    return 0


def _median_us(fn: Callable[[], None], rounds: int, n: int) -> float:
    fn()  # warm up (LRUs filled, code paths hot)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(times)


if __name__ == "__main__":
    raise SystemExit(main())
