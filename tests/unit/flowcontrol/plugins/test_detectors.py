"""Saturation detectors against GIE v1.5's definitions (saturationdetector/utilization and
/concurrency): the expected numbers are worked out by hand from those formulas."""

from __future__ import annotations

import time

import pytest

from epp.datastore.endpoint import Endpoint, EndpointMetrics
from epp.flowcontrol.plugins.concurrency_detector import ConcurrencyDetector
from epp.flowcontrol.plugins.utilization_detector import UtilizationDetector
from epp.scheduling.registry import ConfigError, parse_params
from epp.scheduling.types import CycleState, LLMRequest


def ep(name: str, waiting: int = 0, kv: float = 0.0, age: float | None = 0.0, inflight: int = 0,
       tokens: int = 0) -> Endpoint:
    e = Endpoint(name, "127.0.0.1", 8000)
    e.metrics = EndpointMetrics(waiting_queue_size=waiting, kv_cache_usage=kv,
                                updated_at=0.0 if age is None else time.monotonic() - age)
    e.inflight = inflight
    e.inflight_tokens = tokens
    return e


REQ = LLMRequest(request_id="r", model="m", target_model="m")


def test_utilization_is_mean_of_per_endpoint_roofline() -> None:
    det = UtilizationDetector()  # GIE defaults: queue 5, kv 0.8, staleness 200 ms
    # max(2/5, 0.4/0.8) = 0.5 and max(5/5, 0.2/0.8) = 1.0 -> mean 0.75
    assert det.saturation([ep("a", 2, 0.4), ep("b", 5, 0.2)]) == pytest.approx(0.75)
    # KV above its threshold counts beyond 1: max(0, 0.96/0.8) = 1.2
    assert det.saturation([ep("c", 0, 0.96)]) == pytest.approx(1.2)
    assert det.saturation([]) == 1.0  # no candidates: saturated


def test_utilization_stale_or_never_scraped_endpoint_counts_as_full() -> None:
    det = UtilizationDetector()
    assert det.saturation([ep("stale", age=0.5)]) == 1.0  # older than 200 ms
    assert det.saturation([ep("never", age=None)]) == 1.0
    assert det.saturation([ep("fresh", age=0.05), ep("never", age=None)]) == pytest.approx(0.5)
    lax = UtilizationDetector(params=parse_params(UtilizationDetector.Params,
                                                  {"metricsStalenessThreshold": "1s"}, "t"))
    assert lax.saturation([ep("stale", age=0.5)]) == 0.0


def test_utilization_filter_uses_headroom_and_keeps_all_when_none_passes() -> None:
    params = parse_params(UtilizationDetector.Params, {"queueDepthThreshold": 5, "headroom": 0.2}, "t")
    det = UtilizationDetector(params=params)
    five, six, stale = ep("five", waiting=5), ep("six", waiting=6), ep("stale", age=5.0)
    # Relaxed limit 5 * 1.2 = 6: 5 queued still passes, 6 does not; stale never passes.
    assert det.filter(CycleState(), REQ, [five, six, stale]) == [five]
    assert det.filter(CycleState(), REQ, [six, stale]) == [six, stale]  # GIE: keep all


def test_concurrency_requests_and_tokens_modes() -> None:
    det = ConcurrencyDetector(params=parse_params(ConcurrencyDetector.Params, {"maxConcurrency": 4}, "t"))
    # (3 + 1) in flight over 2 x 4 capacity
    assert det.saturation([ep("a", inflight=3), ep("b", inflight=1)]) == pytest.approx(0.5)
    assert det.saturation([ep("a", inflight=4), ep("b", inflight=4)]) == 1.0
    assert det.saturation([]) == 1.0
    peer = ep("p", inflight=1)
    peer.peer_inflight = 3  # other workers of this replica count too
    assert det.saturation([peer]) == 1.0
    tok = ConcurrencyDetector(params=parse_params(
        ConcurrencyDetector.Params, {"concurrencyMode": "tokens", "maxTokenConcurrency": 1000}, "t"))
    assert tok.saturation([ep("a", tokens=250), ep("b", tokens=1250)]) == pytest.approx(0.75)


def test_concurrency_filter_limit_with_headroom() -> None:
    det = ConcurrencyDetector(params=parse_params(
        ConcurrencyDetector.Params, {"maxConcurrency": 10, "headroom": 0.2}, "t"))
    a, b = ep("a", inflight=11), ep("b", inflight=12)
    assert det.filter(CycleState(), REQ, [a, b]) == [a]  # limit int(10 * 1.2) = 12


@pytest.mark.parametrize(("cls", "raw", "field"), [
    (UtilizationDetector, {"queueDepthThreshold": 0}, "queueDepthThreshold"),
    (UtilizationDetector, {"kvCacheUtilThreshold": 1.5}, "kvCacheUtilThreshold"),
    (UtilizationDetector, {"metricsStalenessThreshold": "soon"}, "metricsStalenessThreshold"),
    (UtilizationDetector, {"headroom": -0.1}, "headroom"),
    (ConcurrencyDetector, {"maxConcurrency": 0}, "maxConcurrency"),
    (ConcurrencyDetector, {"maxTokenConcurrency": -1}, "maxTokenConcurrency"),
    (ConcurrencyDetector, {"concurrencyMode": "bytes"}, "concurrencyMode"),
])
def test_invalid_parameters_name_the_field(cls: type, raw: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"cfg.yaml: plugin 'd'.*{field}"):
        parse_params(cls.Params, raw, "cfg.yaml: plugin 'd'")  # type: ignore[attr-defined]
