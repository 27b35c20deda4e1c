"""Micro-benchmark of one scheduling decision: `python -m epp.scheduling.benchmark`.

Builds N fake endpoints with varied queue / KV-cache metrics, loads a scheduler config (the
embedded default unless --config), and times schedule() and schedule()+pre_request() over
prompts that share system-prompt prefixes, so the prefix LRUs are warm as in production.
Prints the per-decision mean and p50/p99 in microseconds. Bounded in count; no network.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from collections import deque
from time import perf_counter_ns

from epp.config.loader import load_scheduler_config
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint, EndpointMetrics
from epp.datastore.inflight import SERVICE_KEY as TRACKER_KEY
from epp.datastore.inflight import Dispatch, InflightTracker
from epp.scheduling.registry import PluginContext
from epp.scheduling.types import LLMRequest

OUTPUT_TOKENS = 256  # decode tokens charged to the ledger per decision


def _endpoints(ds: Datastore, count: int, rng: random.Random) -> tuple[Endpoint, ...]:
    for i in range(count):
        ds.upsert_endpoint(
            Endpoint(
                name=f"vllm-{i}",
                address="127.0.0.1",
                port=8000 + i,
                metrics=EndpointMetrics(
                    waiting_queue_size=rng.randrange(0, 8),
                    running_requests=rng.randrange(0, 32),
                    kv_cache_usage=rng.random(),
                ),
            )
        )
    return ds.endpoints()


def _prompts(count: int, prompt_chars: int, rng: random.Random) -> list[str]:
    systems = [f"system prompt {k}: " + "you are a helpful assistant. " * 40 for k in range(8)]
    out = []
    for i in range(count):
        system = systems[rng.randrange(len(systems))]
        user = f" user {i} asks about topic {rng.random()} " * 8
        out.append((system + user)[:prompt_chars].ljust(prompt_chars, "."))
    return out


def run(pods: int, decisions: int, prompt_chars: int, config: str | None) -> dict[str, float]:
    rng = random.Random(42)
    ds = Datastore()
    endpoints = _endpoints(ds, pods, rng)
    # The server's in-flight ledger, charged per decision as the server does and released
    # after `2 * pods` later decisions, so the ledger scorers read a busy pool. The response
    # hooks run then too (outside the timing): without its first bytes and stream ends, the
    # latency runtime's prefill queues (predicted-latency-producer) grew by every decision.
    tracker = InflightTracker(ds)
    cfg = load_scheduler_config(config, PluginContext(datastore=ds, services={TRACKER_KEY: tracker}))
    scheduler = cfg.scheduler
    open_dispatches: deque[tuple[Dispatch, LLMRequest, Endpoint]] = deque()
    prompts = _prompts(256, prompt_chars, rng)
    requests = [
        LLMRequest(request_id=str(i), model="m", target_model="m", prompt=prompts[i % len(prompts)])
        for i in range(decisions)
    ]
    # Warm-up: fill the prefix LRUs and let CPython specialise the hot code.
    for req in requests[: min(500, decisions)]:
        result, state = scheduler.schedule(req, endpoints)
        scheduler.pre_request(state, req, result)
    for req in requests:
        req._flat = None  # prompt_text() is cached per request; measure it too

    schedule_ns: list[int] = []
    full_ns: list[int] = []
    for req in requests:
        t0 = perf_counter_ns()
        result, state = scheduler.schedule(req, endpoints)
        t1 = perf_counter_ns()
        scheduler.pre_request(state, req, result)
        t2 = perf_counter_ns()
        schedule_ns.append(t1 - t0)
        full_ns.append(t2 - t0)
        primary = result.primary
        if primary is not None:
            dispatch = tracker.dispatch(primary.targets[:1], prompt_chars // 4 + OUTPUT_TOKENS, prompt_chars // 4)
            open_dispatches.append((dispatch, req, primary.targets[0]))
        if len(open_dispatches) > 2 * pods:
            done, done_req, target = open_dispatches.popleft()
            scheduler.response_received(done_req, target, 200)
            scheduler.post_response(done_req, target, {"status": 200, "completion_tokens": OUTPUT_TOKENS})
            tracker.complete(done)

    def summary(samples: list[int]) -> tuple[float, float, float]:
        q = statistics.quantiles(samples, n=100)
        return statistics.fmean(samples) / 1e3, q[49] / 1e3, q[98] / 1e3

    s_mean, s_p50, s_p99 = summary(schedule_ns)
    f_mean, f_p50, f_p99 = summary(full_ns)
    return {
        "schedule_mean_us": s_mean, "schedule_p50_us": s_p50, "schedule_p99_us": s_p99,
        "with_pre_request_mean_us": f_mean, "with_pre_request_p50_us": f_p50,
        "with_pre_request_p99_us": f_p99,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--prompt-chars", type=int, default=2048)
    parser.add_argument("--config", default=None, help="scheduler config file (default: embedded)")
    args = parser.parse_args(argv)
    decisions = max(100, min(args.decisions, 200_000))
    for pods in args.pods:
        stats = run(pods, decisions, args.prompt_chars, args.config)
        line = " ".join(f"{k}={v:.1f}" for k, v in stats.items())
        print(f"pods={pods} decisions={decisions} prompt_chars={args.prompt_chars} {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
