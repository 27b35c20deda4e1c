"""The cache benchmark's workload and report (the run itself: `python -m epp bench cache --quick`)."""

from __future__ import annotations

import math
from collections import Counter

from epp.bench.cache import CacheBenchResult, CacheBenchSettings, build_workload, faq_questions, report
from epp.bench.stats import Distribution
from epp.responsecache.policy import is_deterministic


def test_workload_is_faq_heavy_deterministic_and_reproducible() -> None:
    s = CacheBenchSettings(requests=2000)
    work = build_workload(s)
    assert work == build_workload(s) and len(work) == 2000
    faq = set(faq_questions(s.faq_questions))
    asked = [body["messages"][0]["content"] for _, _, body in work]
    share = sum(q in faq for q in asked) / len(asked)
    assert abs(share - s.repeat_share) < 0.05
    assert all(is_deterministic(body) for _, _, body in work)
    # Zipf: the most asked FAQ question is asked far more often than the median one.
    counts = sorted(Counter(q for q in asked if q in faq).values(), reverse=True)
    assert counts[0] > 5 * counts[len(counts) // 2]
    # One organisation streams, the other does not; users belong to one organisation.
    assert {(t, body["stream"]) for _, t, body in work} == {(0, True), (1, False)}
    assert all(u % s.tenants == t for u, t, _ in work)
    # One-off questions are unique.
    others = [q for q in asked if q not in faq]
    assert len(set(others)) == len(others)


def test_report_says_missed_when_the_target_is_missed() -> None:
    d = Distribution.of([0.001, 0.002])
    result = CacheBenchResult(settings={}, requests=10, errors=0, hits=4, hit_rate=0.4, ttft_hit=d, ttft_miss=d,
                              total_hit=d, total_miss=d, pod_requests=6, pod_requests_saved=4,
                              epp_cpu_ms_per_hit=0.5, hit_latency=Distribution.of([0.007]),
                              envoy_alone=Distribution.of([0.001]), added_p50_ms=6.0, added_p99_ms=6.0,
                              epp_metrics={}, measured="now")
    text = report(result)
    assert "hit rate: 40.0%" in text and "MISSED" in text and "saved: 4" in text
    result.added_p50_ms = 1.0
    assert "target p50 < 5 ms: met" in report(result)
    assert not math.isnan(result.hit_rate)
