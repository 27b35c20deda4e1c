import pytest

from epp.bench.envoy_configs import instant_upstream_config, lb_envoy_config, vllm_metrics_text
from epp.metricsscrape.parser import scan_families


def test_lb_config_lists_every_pod_with_the_policy() -> None:
    cfg = lb_envoy_config(8080, 9901, [("127.0.0.1", 8001), ("127.0.0.1", 8002)], "LEAST_REQUEST")
    cluster = cfg["static_resources"]["clusters"][0]
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"]
             for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert ports == [8001, 8002]
    listener = cfg["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8080}


def test_lb_config_rejects_unknown_policy_and_empty_pool() -> None:
    with pytest.raises(ValueError, match="lb_policy"):
        lb_envoy_config(1, 2, [("127.0.0.1", 3)], "FASTEST")
    with pytest.raises(ValueError, match="at least one pod"):
        lb_envoy_config(1, 2, [])


def test_instant_upstream_has_one_loopback_listener_per_port() -> None:
    cfg = instant_upstream_config([7001, 7002, 7003], 9000, "m")
    listeners = cfg["static_resources"]["listeners"]
    assert [lst["address"]["socket_address"]["port_value"] for lst in listeners] == [7001, 7002, 7003]
    assert all(lst["address"]["socket_address"]["address"] == "127.0.0.1" for lst in listeners)


def test_instant_upstream_metrics_parse_as_an_idle_vllm_pod() -> None:
    names = ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:cache_config_info")
    families = scan_families(vllm_metrics_text("m"), names)
    assert all(families.get(name) for name in names)
