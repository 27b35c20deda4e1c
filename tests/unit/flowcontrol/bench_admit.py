"""Benchmark behind docs/flow-control.md (not collected by pytest).

    .venv/bin/python -m tests.unit.flowcontrol.bench_admit

Per-request cost of the flow gate when the pool is not saturated and nobody waits (the
common path): AdmissionPipeline.admit + on_complete over 4 endpoints, per detector, and the
same with an API-key check (hash + constant-time compare).
"""

from __future__ import annotations

import time
from pathlib import Path
from tempfile import TemporaryDirectory

from prometheus_client import CollectorRegistry

from epp.datastore.endpoint import Endpoint, EndpointMetrics
from epp.flowcontrol.config import BandConfig, FlowControlConfig
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.interfaces import SaturationDetector
from epp.flowcontrol.metrics import FlowControlMetrics
from epp.flowcontrol.pipeline import AdmissionPipeline
from epp.flowcontrol.plugins.concurrency_detector import ConcurrencyDetector
from epp.flowcontrol.plugins.fcfs_ordering import FCFSOrdering
from epp.flowcontrol.plugins.global_strict_fairness import GlobalStrictFairness
from epp.flowcontrol.plugins.utilization_detector import UtilizationDetector
from epp.flowcontrol.tenants import ApiKeyAuth
from epp.scheduling.types import LLMRequest

N = 200_000


def main() -> None:
    eps = [Endpoint(f"p{i}", "127.0.0.1", 8000 + i) for i in range(4)]
    for e in eps:
        e.metrics = EndpointMetrics(updated_at=time.monotonic() + 3600)  # always fresh
    req = LLMRequest(request_id="r", model="m", target_model="m")
    detectors: list[SaturationDetector] = [ConcurrencyDetector(), UtilizationDetector()]
    for det in detectors:
        cfg = FlowControlConfig(enabled=True, detector=det,
                                default_band=BandConfig(0, GlobalStrictFairness(), FCFSOrdering()))
        gate = AdmissionPipeline(FlowController(cfg, lambda: eps, FlowControlMetrics(CollectorRegistry())))
        t = time.perf_counter()
        for _ in range(N):
            gate.admit(req, 100)
            gate.on_complete(req, None)
        print(f"{det.name}: admit + on_complete {1e6 * (time.perf_counter() - t) / N:.2f} us/request "
              "(4 endpoints, not saturated)")
    with TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.yaml"
        keys.write_text("tenants:\n" + "".join(f"- {{name: t{i}, keys: [sk-{i}]}}\n" for i in range(1000)))
        auth = ApiKeyAuth(keys)
        headers = {"authorization": "Bearer sk-500"}
        t = time.perf_counter()
        for _ in range(N):
            auth.authenticate(headers)
        print(f"API key check (1000 keys): {1e6 * (time.perf_counter() - t) / N:.2f} us/request")


if __name__ == "__main__":
    main()
