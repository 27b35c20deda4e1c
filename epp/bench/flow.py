"""`epp bench flow`: the pool at about 2x its capacity, three priority classes and two tenants,
with and without flow control (issue 12's targets; docs/flow-control.md).

Per arm: a fresh local stack (simulated pods, Envoy, the EPP with API keys for two tenants).
1. Unloaded: a few sequential critical requests give the unloaded TTFT and (first arm only,
   reused by the others) the request time, hence the pool's capacity = pods x max-num-seqs /
   request time.
2. Overload: open-loop Poisson arrivals at `overload` x capacity for `model_seconds` (scaled
   by the simulator's time scale), classes critical 20% / standard 50% / sheddable 30%, the
   heavy tenant sending 4x the light one's rate. Every request is streamed (TTFT = first
   chunk) and must end with a status within a bound: anything else counts as hung or lost.
Reported: critical TTFT p99 loaded / unloaded (target <= 1.5), Jain's index over the tenants'
served / max-min-fair share (target >= 0.95), sent = answered OK + rejected with a status.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from epp.localstack.stack import REPO, LocalStack, StackConfig

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CLASSES = (("critical", "llama3-8b-instruct", 0.2), ("standard", "", 0.5), ("sheddable", "batch-sheddable", 0.3))
TENANTS = (("heavy", "sk-bench-heavy", 4.0), ("light", "sk-bench-light", 1.0))
KEYS = "tenants:\n" + "".join(f"- {{name: {n}, keys: [{k}]}}\n" for n, k, _ in TENANTS)
FLOW_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: concurrency-detector
  parameters: {{maxConcurrency: {max_concurrency}}}
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
saturationDetector: {{pluginRef: concurrency-detector}}
flowControl:
  defaultRequestTTL: {ttl_ms}ms
  defaultPriorityBand: {{fairnessPolicyRef: round-robin-fairness-policy}}
  requestTTLByObjective: {{batch-sheddable: {shed_ttl_ms}ms}}
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: queue-scorer, weight: 2}}
  - {{pluginRef: kv-cache-utilization-scorer, weight: 2}}
  - {{pluginRef: max-score-picker}}
"""


@dataclass(slots=True)
class FlowBenchSettings:
    pods: int = 2
    max_num_seqs: int = 4
    max_tokens: int = 64
    model_seconds: float = 60.0
    time_scale: float = 0.1
    overload: float = 2.0
    seed: int = 1
    run_dir: Path = field(default_factory=lambda: REPO / ".run" / "bench-flow")


@dataclass(slots=True)
class Outcome:
    cls: str
    tenant: str
    status: int  # 0: exception (lost), -1: no answer within the bound (hung)
    ttft: float | None
    sent_at: float
    ended_at: float


@dataclass(slots=True)
class ArmResult:
    arm: str
    capacity_rps: float
    rate_rps: float
    unloaded_ttft_p99: float
    outcomes: list[Outcome]

    def summary(self) -> dict[str, Any]:
        sent = len(self.outcomes)
        ok = sum(1 for o in self.outcomes if o.status == 200)
        rejected = sum(1 for o in self.outcomes if o.status >= 400)
        hung = sum(1 for o in self.outcomes if o.status == -1)
        lost = sent - ok - rejected - hung
        crit = [o.ttft for o in self.outcomes if o.cls == "critical" and o.status == 200 and o.ttft is not None]
        crit_p99 = _pct(crit, 0.99)
        by_class = {c: dict(Counter(o.status for o in self.outcomes if o.cls == c)) for c, _, _ in CLASSES}
        return {"arm": self.arm, "sent": sent, "ok": ok, "rejected": rejected, "hung": hung, "lost": lost,
                "capacity_rps": self.capacity_rps, "rate_rps": self.rate_rps,
                "critical_ttft_p99_s": crit_p99, "unloaded_ttft_p99_s": self.unloaded_ttft_p99,
                "critical_ttft_ratio": crit_p99 / self.unloaded_ttft_p99 if self.unloaded_ttft_p99 else None,
                "jain": jain_index(self.outcomes), "by_class": by_class}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def jain_index(outcomes: list[Outcome]) -> float:
    """Jain's index of served / fair share over the tenants, fair share being the max-min fair
    split of everything served given each tenant's demand."""
    demand = Counter(o.tenant for o in outcomes)
    served = Counter(o.tenant for o in outcomes if o.status == 200)
    total = sum(served.values())
    if total == 0:
        return float("nan")
    fair: dict[str, float] = {}
    left, names = float(total), sorted(demand, key=lambda t: demand[t])
    for i, t in enumerate(names):
        share = min(float(demand[t]), left / (len(names) - i))
        fair[t] = share
        left -= share
    x = [served[t] / fair[t] for t in names if fair[t] > 0]
    return sum(x) ** 2 / (len(x) * sum(v * v for v in x))


async def _one(client: httpx.AsyncClient, url: str, cls: str, objective: str, tenant: str, key: str,
               max_tokens: int, bound_s: float) -> Outcome:
    headers = {"authorization": f"Bearer {key}"}
    if objective:
        headers["x-gateway-inference-objective"] = objective
    start = time.monotonic()
    ttft: float | None = None
    try:
        async with asyncio.timeout(bound_s):
            async with client.stream("POST", f"{url}/v1/completions", headers=headers, json={
                    "model": MODEL, "prompt": "flow bench", "max_tokens": max_tokens, "stream": True}) as r:
                async for chunk in r.aiter_bytes():
                    if ttft is None and chunk:
                        ttft = time.monotonic() - start
                status = r.status_code
    except TimeoutError:
        status = -1
    except httpx.HTTPError:
        status = 0
    return Outcome(cls, tenant, status, ttft if status == 200 else None, start, time.monotonic())


async def _run_arm(arm: str, stack: LocalStack, s: FlowBenchSettings, capacity: float | None) -> ArmResult:
    rng = random.Random(s.seed)
    url = stack.url
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:
        unloaded = [await _one(client, url, "critical", CLASSES[0][1], "light", TENANTS[1][1], s.max_tokens, 60)
                    for _ in range(6)]
        times = [o.ended_at - o.sent_at for o in unloaded[1:] if o.status == 200]
        ttfts = [o.ttft for o in unloaded[1:] if o.ttft is not None]
        if not times or not ttfts:
            raise RuntimeError(f"{arm}: unloaded requests failed: {[o.status for o in unloaded]}")
        if capacity is None:  # calibrated once, so every arm gets the same offered load
            capacity = s.pods * s.max_num_seqs / statistics.mean(times)
        rate = s.overload * capacity
        duration = s.model_seconds * s.time_scale
        bound = max(30.0, 4 * duration)
        tasks: list[asyncio.Task[Outcome]] = []
        t = time.monotonic()
        end = t + duration
        weights = [w for _, _, w in TENANTS]
        while t < end:
            cls, objective, _ = rng.choices(CLASSES, [w for _, _, w in CLASSES])[0]
            tenant, key, _ = rng.choices(TENANTS, weights)[0]
            tasks.append(asyncio.create_task(_one(client, url, cls, objective, tenant, key, s.max_tokens, bound)))
            t += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, t - time.monotonic()))
        outcomes = list(await asyncio.gather(*tasks))
    return ArmResult(arm, capacity, rate, _pct(ttfts, 0.99), outcomes)


def run_flow_bench(s: FlowBenchSettings) -> list[ArmResult]:
    s.run_dir.mkdir(parents=True, exist_ok=True)
    keys = s.run_dir / "keys.yaml"
    keys.write_text(KEYS)
    # TTLs in model time: 30 s for everyone, 5 s for sheddable work.
    ttl_ms, shed_ttl_ms = round(30_000 * s.time_scale), round(5_000 * s.time_scale)
    arms: list[tuple[str, Path | None]] = [("no flow control", None)]
    fc = s.run_dir / "epp-config-flow.yaml"
    fc.write_text(FLOW_CONFIG.format(max_concurrency=s.max_num_seqs, ttl_ms=ttl_ms, shed_ttl_ms=shed_ttl_ms))
    arms.append(("flow control", fc))
    results: list[ArmResult] = []
    for name, config in arms:
        cfg = StackConfig(ports_free=True, run_dir=s.run_dir / name.replace(" ", "-"), pods=s.pods,
                          time_scale=s.time_scale, kv_events=False, epp_config=config,
                          sim_args=["--max-num-seqs", str(s.max_num_seqs)],
                          epp_args=["--api-keys", str(keys)], envoy_message_timeout_ms=600_000)
        stack = LocalStack(cfg)
        try:
            stack.start(timeout=60)
            capacity = results[0].capacity_rps if results else None
            results.append(asyncio.run(_run_arm(name, stack, s, capacity)))
        finally:
            stack.stop()
    return results


def report(results: list[ArmResult]) -> str:
    lines = ["| arm | sent | OK | rejected | hung | lost | critical TTFT p99 loaded / unloaded | Jain |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r.summary()
        lines.append(f"| {m['arm']} | {m['sent']} | {m['ok']} | {m['rejected']} | {m['hung']} | {m['lost']} | "
                     f"{m['critical_ttft_p99_s'] * 1000:.0f} / {m['unloaded_ttft_p99_s'] * 1000:.0f} ms "
                     f"({m['critical_ttft_ratio']:.2f}x) | {m['jain']:.3f} |")
    for r in results:
        m = r.summary()
        lines.append(f"{m['arm']}: capacity {m['capacity_rps']:.1f} req/s, offered {m['rate_rps']:.1f} req/s; "
                     f"statuses by class {m['by_class']}")
    return "\n".join(lines)


def add_flow_parser(bench_sub: Any) -> None:
    f = bench_sub.add_parser("flow", help="2x overload, three priorities, two tenants: with vs without flow "
                                          "control (issue: flow control)", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--quick", action="store_true", default=argparse.SUPPRESS,
                   help="10 model-seconds instead of 60")
    f.add_argument("--model-seconds", type=float, default=None)
    f.add_argument("--time-scale", type=float, default=argparse.SUPPRESS)
    f.add_argument("--run-dir", type=Path, default=argparse.SUPPRESS)
    f.set_defaults(func=run_flow_only)


def run_flow_only(args: argparse.Namespace) -> int:
    s = FlowBenchSettings()
    if getattr(args, "quick", False):
        s.model_seconds = 10.0
    if args.model_seconds is not None:
        s.model_seconds = args.model_seconds
    if getattr(args, "time_scale", None):
        s.time_scale = args.time_scale
    if getattr(args, "run_dir", None) is not None:
        s.run_dir = Path(args.run_dir) / "flow"
    print(report(run_flow_bench(s)), flush=True)
    return 0
