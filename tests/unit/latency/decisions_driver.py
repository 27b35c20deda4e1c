"""A deterministic run of the predicted-latency profile, printed as JSON:
`python -m tests.unit.latency.decisions_driver`. test_native.py runs it once with the
pure-Python latency modules and once with the mypyc build, and compares the two outputs.

One fake clock drives the runtime, the predictor and the in-flight ledger; the trainer thread
is stopped, and the predictor refits at fixed points. Requests mix prompt lengths (shared
system prompts, so the prefix scorer matches), SLO headers on most, no SLO on some, and
sheddable ones the admitter may refuse. Each decision's pick, the candidates' predictions and
the runtime's queue state are recorded with repr() of every float, so the comparison is exact.
"""

from __future__ import annotations

import json
import random
import sys
from collections import deque
from typing import Any

from epp.config.loader import parse_scheduler_config
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint, EndpointMetrics
from epp.datastore.inflight import SERVICE_KEY as TRACKER_KEY
from epp.datastore.inflight import InflightTracker
from epp.latency import native
from epp.latency.runtime import STATE_KEY, CyclePredictions, latency_runtime
from epp.scheduling.registry import PluginContext
from epp.scheduling.types import LLMRequest, SchedulingError

CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: predicted-latency-producer
  parameters: {scoreRequestsWithoutSLO: true, minSamples: 20, minPodSamples: 20}
- type: latency-slo-admitter
- type: slo-headroom-tier-filter
- type: latency-scorer
  parameters: {ttftWeight: 0.5, tpotWeight: 0.5, withoutSLO: latency, queueHarmWeight: 0.5,
               runningTpotWeight: 1.0, withoutSLOMaxTtftRatio: 1.25, lastChunkHarmWeight: 1.0,
               maxExtraTtftSeconds: 1.0}
- type: prefill-load-scorer
- type: active-request-scorer
  parameters: {includeScraped: true}
- type: prefix-cache-scorer
  parameters: {blockSize: 64}
- type: max-score-picker
- type: single-profile-handler
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: latency-slo-admitter
  - pluginRef: slo-headroom-tier-filter
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: latency-scorer
    weight: 10
  - pluginRef: prefill-load-scorer
  - pluginRef: active-request-scorer
  - pluginRef: max-score-picker
"""


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def run(decisions: int = 600, pods: int = 6, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    clock = Clock()
    ds = Datastore()
    speed = {}
    for i in range(pods):
        name = f"vllm-{i}"
        speed[name] = 2.0 if i == 0 else 1.0 + 0.1 * i  # one pod 2x slower
        ds.upsert_endpoint(Endpoint(name=name, address="127.0.0.1", port=8000 + i,
                                    metrics=EndpointMetrics(waiting_queue_size=rng.randrange(0, 3),
                                                            running_requests=rng.randrange(0, 8),
                                                            kv_cache_usage=rng.random() * 0.5)))
    endpoints = ds.endpoints()
    tracker = InflightTracker(ds, clock=clock)
    services: dict[str, Any] = {TRACKER_KEY: tracker}
    config = parse_scheduler_config(CONFIG, PluginContext(datastore=ds, services=services))
    scheduler = config.scheduler
    for plugin in config.plugins.values():  # the picker's and the filter's tie-breaks
        if isinstance(getattr(plugin, "rng", None), random.Random):
            plugin.rng.seed(seed)
    rt = latency_runtime(services)
    rt.predictor.stop()  # refits below, at fixed points, instead of on the trainer's timer
    rt.clock = rt.predictor.clock = clock
    systems = [f"system {k}: " + "be brief and exact. " * (20 + 40 * k) for k in range(4)]
    # (request, endpoint, dispatch, first byte due, end due)
    open_requests: deque[tuple[LLMRequest, Endpoint, Any, float, float]] = deque()
    first_bytes: set[str] = set()
    out: list[list[Any]] = []
    for i in range(decisions):
        clock.now += rng.expovariate(8.0)
        # Responses due by now: first bytes and ends, in time order.
        for req, ep, dispatch, first_due, end_due in list(open_requests):
            if first_due <= clock.now and req.request_id not in first_bytes:
                scheduler.response_received(req, ep, 200)
                first_bytes.add(req.request_id)
            if end_due <= clock.now:
                scheduler.post_response(req, ep, {"status": 200, "completion_tokens": 32})
                tracker.complete(dispatch)
                open_requests.remove((req, ep, dispatch, first_due, end_due))
        if i in (80, 160, 300, 450):
            rt.predictor.refit()
        words = rng.choice((30, 200, 2000, 9000))
        prompt = rng.choice(systems) + f" question {i}: " + " ".join(f"w{rng.randrange(50)}" for _ in range(words))
        headers: dict[str, str] = {}
        kind = rng.random()
        if kind < 0.6:
            headers["x-llm-d-slo-ttft-ms"] = str(rng.choice((300, 1000, 3000)))
            headers["x-llm-d-slo-tpot-ms"] = str(rng.choice((30, 80)))
        priority = -1 if rng.random() < 0.3 else 0  # sheddable
        req = LLMRequest(request_id=str(i), model="m", target_model="m", prompt=prompt, headers=headers,
                         priority=priority, stream=rng.random() < 0.9, max_tokens=32)
        try:
            result, state = scheduler.schedule(req, endpoints)
        except SchedulingError as e:
            out.append([i, "refused", e.status])
            continue
        primary = result.primary
        if primary is None or not primary.targets:
            out.append([i, "none"])
            continue
        target = primary.targets[0]
        scheduler.pre_request(state, req, result)
        cycle = state.get(STATE_KEY)
        predictions = ({k: [repr(v) for v in p] for k, p in sorted(cycle.by_key.items())}
                       if isinstance(cycle, CyclePredictions) else None)
        out.append([i, target.name, predictions,
                    {k: repr(v) for k, v in sorted(rt.queue_clear_at.items())},
                    {k: repr(v) for k, v in sorted(rt.pending_prefill.items())}])
        dispatch = tracker.dispatch([target], len(prompt) // 4 + 32, len(prompt) // 4)
        tokens = len(prompt) // 4
        ttft = speed[target.name] * (0.03 + 0.06 * tokens / 1000.0) * (1.0 + 0.2 * len(open_requests) / pods)
        decode = 32 * 0.02 * speed[target.name]
        open_requests.append((req, target, dispatch, clock.now + ttft, clock.now + ttft + decode))
    models = {k: [repr(c) for c in (m.ttft or ())] for k, m in sorted(rt.predictor.models.items())}
    return {"compiled": native.status().compiled, "decisions": out, "models": models}


if __name__ == "__main__":
    json.dump(run(), sys.stdout)
