from __future__ import annotations

import json
import time

import pytest

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint, EndpointMetrics
from epp.flowcontrol import (
    EPP_OVERLOADED,
    POOL_SATURATED,
    AdmissionConfig,
    AdmissionController,
    PoolSaturation,
    SaturationConfig,
)
from epp.scheduling.types import LLMRequest


def endpoint(
    ds: Datastore, name: str, waiting: int = 0, kv: float = 0.0, age: float | None = 0.0
) -> Endpoint:
    updated = 0.0 if age is None else time.monotonic() - age
    ep = Endpoint(name, "127.0.0.1", 8000 + len(ds.endpoints()))
    ep.metrics = EndpointMetrics(waiting_queue_size=waiting, kv_cache_usage=kv, updated_at=updated)
    return ds.upsert_endpoint(ep)


def request(priority: int = 0) -> LLMRequest:
    return LLMRequest(request_id="r", model="m", target_model="m", priority=priority)


def test_saturated_when_mean_endpoint_utilization_reaches_one() -> None:
    # GIE v1.5 utilization detector: mean over healthy endpoints of
    # max(waiting / queueDepthThreshold, kv / kvCacheUtilThreshold), saturated at >= 1.0.
    ds = Datastore()
    det = PoolSaturation(ds, SaturationConfig().detector())
    assert det.is_saturated()  # no endpoints: nothing has capacity
    endpoint(ds, "queue-full", waiting=5)
    endpoint(ds, "kv-full", kv=0.8)
    assert det.is_saturated()
    spare = endpoint(ds, "spare", waiting=4, kv=0.79)  # 0.9875: mean (1 + 1 + 0.9875) / 3 < 1
    assert not det.is_saturated()
    ds.set_health(spare, False)  # unhealthy endpoints do not count
    assert det.is_saturated()


def test_stale_or_unscraped_metrics_mean_no_capacity() -> None:
    ds = Datastore()
    det = PoolSaturation(ds, SaturationConfig(metrics_staleness_threshold=0.5).detector())
    endpoint(ds, "stale", age=2.0)
    endpoint(ds, "never", age=None)
    assert det.is_saturated()
    relaxed = PoolSaturation(ds, SaturationConfig(metrics_staleness_threshold=None).detector())
    assert not relaxed.is_saturated()


def test_thresholds_are_configurable_and_validated() -> None:
    ds = Datastore()
    endpoint(ds, "a", waiting=7, kv=0.85)
    lenient = SaturationConfig(queue_depth_threshold=10, kv_cache_util_threshold=0.9)
    assert not PoolSaturation(ds, lenient.detector()).is_saturated()
    with pytest.raises(ValueError, match="kvCacheUtilThreshold"):
        SaturationConfig(kv_cache_util_threshold=1.5).validate()
    with pytest.raises(ValueError, match="queueDepthThreshold"):
        SaturationConfig(queue_depth_threshold=0).validate()


def test_sheddable_requests_rejected_with_429_only_when_saturated() -> None:
    ds = Datastore()
    full = endpoint(ds, "full", waiting=9)
    ctl = AdmissionController(PoolSaturation(ds, SaturationConfig().detector()))
    assert ctl.admit(request(priority=-1)) is POOL_SATURATED
    assert ctl.admit(request(priority=0)) is None  # critical/standard work passes
    assert ctl.admit(request(priority=5)) is None
    assert ctl.inflight == 2
    full.metrics = EndpointMetrics(waiting_queue_size=0, updated_at=time.monotonic())
    assert ctl.admit(request(priority=-1)) is None
    assert ctl.rejected == {"inference_pool_saturated": 1}


def test_rejection_body_is_openai_error_json() -> None:
    body = json.loads(POOL_SATURATED.body)
    assert POOL_SATURATED.status == 429
    assert body["error"]["code"] == "inference_pool_saturated"
    assert body["error"]["type"] == "rate_limit_exceeded"
    assert "saturated" in body["error"]["message"] and body["error"]["param"] is None
    assert EPP_OVERLOADED.status == 503


def test_inflight_cap_rejects_fast_and_release_frees() -> None:
    ctl = AdmissionController(None, AdmissionConfig(max_inflight_requests=2))
    assert ctl.admit(request()) is None
    assert ctl.admit(request()) is None
    assert ctl.admit(request(priority=10)) is EPP_OVERLOADED
    ctl.release()
    assert ctl.admit(request()) is None
    for _ in range(5):
        ctl.release()
    assert ctl.inflight == 0  # never negative
