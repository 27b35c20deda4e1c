from __future__ import annotations

import time

import httpx

from epp.datastore.datastore import Datastore, PoolSpec
from epp.datastore.endpoint import Endpoint, EndpointMetrics
from epp.observability.exposition import HttpServer, metrics_app
from epp.observability.metrics import OVERFLOW_LABEL, EPPMetrics
from tests.helpers.metrics import scraped_samples

GIE_NAMES = (
    "inference_objective_request_total",
    "inference_model_request_total",
    "inference_objective_request_error_total",
    "inference_objective_request_duration_seconds",
    "inference_objective_input_tokens",
    "inference_objective_output_tokens",
    "inference_objective_running_requests",
    "inference_pool_average_kv_cache_utilization",
    "inference_pool_average_queue_size",
    "inference_pool_per_pod_queue_size",
    "inference_pool_ready_pods",
    "inference_extension_scheduler_e2e_duration_seconds",
    "inference_extension_plugin_duration_seconds",
    "inference_extension_info",
)
OPERATOR_NAMES = (
    "scheduler_requests_total",
    "scheduler_pod_score",
    "scheduler_cache_hits_total",
    "scheduler_cache_misses_total",
    "scheduler_decision_duration_seconds",
)


def pool_datastore() -> Datastore:
    ds = Datastore(PoolSpec(name="vllm-llama3-8b", selector={"app": "vllm"}))
    now = time.monotonic()
    for i, (waiting, kv) in enumerate([(2, 0.2), (4, 0.6), (50, 0.99)]):
        ep = Endpoint(f"pod-{i}", "127.0.0.1", 8000 + i)
        ep.metrics = EndpointMetrics(waiting_queue_size=waiting, kv_cache_usage=kv, updated_at=now)
        ds.upsert_endpoint(ep)
    ds.set_health(ds.endpoints()[2], False)  # excluded from the pool gauges
    return ds


def exercise(m: EPPMetrics) -> None:
    s = m.series("llama", "llama-lora")
    s.on_request()
    s.on_request()
    s.on_done(duration=0.7, input_tokens=120, output_tokens=33)
    s.on_error("429")
    m.observe_decision("default", 0.0004)
    m.observe_decision("prefill", 0.02, success=False)
    m.observe_plugin("Scorer", "queue-scorer", "queue", 0.00005)
    m.set_pod_scores({"default/pod-0": 0.8, "default/pod-1": 0.3})
    m.prefix_cache_lookup(True)
    m.prefix_cache_lookup(False)
    m.prefix_cache_lookup(False)


def test_all_names_exposed_with_expected_values() -> None:
    ds = pool_datastore()
    m = EPPMetrics(datastore=ds, commit="abc123")
    exercise(m)
    got = scraped_samples(m.registry)
    names = {name for name, _ in got}
    for name in (*GIE_NAMES, *OPERATOR_NAMES):
        assert any(n == name or n.startswith(name + "_") for n in names), name
    pair = (("model_name", "llama"), ("target_model_name", "llama-lora"))
    assert got[("inference_objective_request_total", pair)] == 2
    assert got[("inference_model_request_total", pair)] == 2
    assert got[("inference_objective_request_error_total", (("error_code", "429"), *pair))] == 1
    assert got[("inference_objective_running_requests", (("model_name", "llama"),))] == 1
    assert got[("inference_objective_request_duration_seconds_count", pair)] == 1
    assert got[("inference_objective_input_tokens_sum", pair)] == 120
    assert got[("inference_objective_output_tokens_sum", pair)] == 33
    pool = (("name", "vllm-llama3-8b"),)
    assert got[("inference_pool_ready_pods", pool)] == 2
    assert got[("inference_pool_average_queue_size", pool)] == 3.0
    assert abs(got[("inference_pool_average_kv_cache_utilization", pool)] - 0.4) < 1e-9
    assert got[("inference_pool_per_pod_queue_size", (("model_server_pod", "pod-1"), *pool))] == 4
    assert ("inference_pool_per_pod_queue_size", (("model_server_pod", "pod-2"), *pool)) not in got
    assert got[("scheduler_requests_total", (("profile", "default"), ("result", "success")))] == 1
    assert got[("scheduler_requests_total", (("profile", "prefill"), ("result", "failure")))] == 1
    assert got[("inference_extension_scheduler_attempts_total", (("status", "failure"),))] == 1
    assert got[("scheduler_decision_duration_seconds_count", ())] == 2
    assert got[("inference_extension_scheduler_e2e_duration_seconds_count", ())] == 2
    plugin = (("extension_point", "Scorer"), ("plugin_name", "queue"), ("plugin_type", "queue-scorer"))
    assert got[("inference_extension_plugin_duration_seconds_count", plugin)] == 1
    assert got[("scheduler_pod_score", (("pod", "default/pod-0"),))] == 0.8
    assert got[("scheduler_cache_hits_total", ())] == 1
    assert got[("scheduler_cache_misses_total", ())] == 2
    assert got[("inference_extension_info", (("build_ref", "unknown"), ("commit", "abc123")))] == 1


def test_pool_gauges_follow_datastore_without_per_request_updates() -> None:
    ds = pool_datastore()
    m = EPPMetrics(datastore=ds)
    pool = (("name", "vllm-llama3-8b"),)
    assert scraped_samples(m.registry)[("inference_pool_ready_pods", pool)] == 2
    ds.set_health(ds.endpoints()[2], True)
    assert scraped_samples(m.registry)[("inference_pool_ready_pods", pool)] == 3
    assert scraped_samples(m.registry)[("inference_pool_average_queue_size", pool)] == (2 + 4 + 50) / 3


def test_registries_are_independent_and_series_cached() -> None:
    a, b = EPPMetrics(), EPPMetrics()
    assert a.series("m", "t") is a.series("m", "t")
    a.series("m", "t").on_request()
    assert scraped_samples(a.registry)[("inference_objective_request_total",
                                (("model_name", "m"), ("target_model_name", "t")))] == 1
    assert ("inference_objective_request_total",
            (("model_name", "m"), ("target_model_name", "t"))) not in scraped_samples(b.registry)


def test_model_label_cardinality_is_bounded() -> None:
    m = EPPMetrics(max_model_series=2)
    m.series("a", "a").on_request()
    m.series("b", "b").on_request()
    m.series("c", "c").on_request()
    m.series("d", "d").on_request()
    got = scraped_samples(m.registry)
    other = (("model_name", OVERFLOW_LABEL), ("target_model_name", OVERFLOW_LABEL))
    assert got[("inference_objective_request_total", other)] == 2


def test_forget_pod_removes_its_score() -> None:
    m = EPPMetrics()
    m.set_pod_scores({"p": 0.5})
    m.forget_pod("p")
    assert not any(name == "scheduler_pod_score" for name, _ in scraped_samples(m.registry))


async def test_metrics_served_over_http_on_loopback() -> None:
    m = EPPMetrics(datastore=pool_datastore())
    exercise(m)
    server = HttpServer(metrics_app(m.registry), "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            resp = await client.get(f"{server.url}/metrics")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        for name in (*GIE_NAMES, *OPERATOR_NAMES):
            assert f"\n{name}" in resp.text, name
    finally:
        await server.stop()


async def test_observability_servers_separate_and_shared_port() -> None:
    from epp.observability.exposition import ObservabilityServers
    from epp.observability.health import ReadinessProbe
    from tests.helpers.procs import free_port

    ds = pool_datastore()
    m = EPPMetrics(datastore=ds)
    probe = ReadinessProbe(ds)
    separate = ObservabilityServers(m.registry, probe, "127.0.0.1", metrics_port=0, health_port=0)
    await separate.start()
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(f"{separate.metrics.url}/metrics")).status_code == 200
            assert (await client.get(f"{separate.health.url}/readyz")).status_code == 200
            assert (await client.get(f"{separate.health.url}/metrics")).status_code == 404
    finally:
        await separate.stop()
    port = free_port()
    shared = ObservabilityServers(m.registry, probe, "127.0.0.1", metrics_port=port, health_port=port)
    await shared.start()
    try:
        async with httpx.AsyncClient(trust_env=False, base_url=f"http://127.0.0.1:{port}") as client:
            assert "inference_pool_ready_pods" in (await client.get("/metrics")).text
            assert (await client.get("/healthz")).json() == {"status": "ok"}
    finally:
        await shared.stop()
