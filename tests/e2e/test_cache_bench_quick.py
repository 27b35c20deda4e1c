"""`epp bench cache` end to end, tiny: real simulated pods, real Envoy, real EPPs. Asserts the
run completes and its accounting adds up (no timing asserts: a shared CI machine's numbers
mean nothing)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from epp.bench.cache import COST_ARMS, CacheBenchSettings, report, run_cache_bench

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_tiny_cache_bench_accounts_for_every_request(tmp_path: Path) -> None:
    s = CacheBenchSettings(requests=40, faq_questions=5, concurrency=4, max_tokens=4, time_scale=0.05,
                           hit_phase_requests=10, side_by_side_rounds=1, side_by_side_requests=5,
                           run_dir=tmp_path / "run", out_dir=tmp_path / "out")
    r = run_cache_bench(s, progress=lambda _: None)
    assert r.requests == 40 and r.errors == 0
    assert 0 < r.hits < r.requests and r.hit_rate == r.hits / r.requests
    # The pods' own counters: every request not answered by the cache reached a pod, once.
    assert r.pod_requests == r.requests - r.hits and r.pod_requests_saved == r.hits
    assert r.epp_metrics["epp_response_cache_hits_total{model=\"meta-llama/Llama-3.1-8B-Instruct\"}"] >= r.hits
    assert set(r.processing_cost) == set(COST_ARMS) and all(d.count == 5 for d in r.processing_cost.values())
    assert not math.isnan(r.added_p50_ms) and "hit rate" in report(r)
