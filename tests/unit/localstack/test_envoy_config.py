import subprocess
from pathlib import Path

import pytest
import yaml

from epp.localstack.envoy_config import CHECKED_IN, EnvoyConfigParams, checked_in_text, render_envoy_config
from epp.localstack.stack import envoy_binary

ENVOY_DIR = Path(__file__).resolve().parents[3] / "envoy"


@pytest.mark.parametrize("name", sorted(CHECKED_IN))
def test_checked_in_configs_are_current(name: str) -> None:
    assert (ENVOY_DIR / name).read_text() == checked_in_text(name), \
        "regenerate with: python -m epp.localstack.envoy_config"


@pytest.mark.parametrize("name", sorted(CHECKED_IN))
def test_envoy_accepts_the_config(name: str) -> None:
    out = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(ENVOY_DIR / name)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _routes(cfg: dict) -> list[dict]:  # type: ignore[type-arg]
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["route_config"]["virtual_hosts"][0]["routes"]  # type: ignore[no-any-return]


def _clusters(cfg: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {c["name"]: c for c in cfg["static_resources"]["clusters"]}


def _ext_proc(cfg: dict) -> dict:  # type: ignore[type-arg]
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")  # type: ignore[no-any-return]


def test_without_known_endpoints_original_dst_routes_on_the_epp_header() -> None:
    cfg = render_envoy_config(EnvoyConfigParams())
    od = _clusters(cfg)["original_destination"]
    assert od["type"] == "ORIGINAL_DST"
    assert od["original_dst_lb_config"] == {"use_http_header": True,
                                            "http_header_name": "x-gateway-destination-endpoint"}
    assert "pool" not in _clusters(cfg)
    assert "direct_response" in _routes(cfg)[-1]


def test_pool_cluster_reads_pick_and_fallbacks_from_envoy_lb_metadata() -> None:
    cfg = render_envoy_config(EnvoyConfigParams(fallback_endpoints=[("127.0.0.1", 1), ("127.0.0.1", 2)]))
    pool = _clusters(cfg)["pool"]
    policy = pool["load_balancing_policy"]["policies"][0]["typed_extension_config"]
    assert policy["name"] == "envoy.load_balancing_policies.override_host"
    # Metadata only: the header would name just the pick, without the fallbacks.
    assert policy["typed_config"]["override_host_sources"] == [
        {"metadata": {"key": "envoy.lb", "path": [{"key": "x-gateway-destination-endpoint"}]}}]
    assert pool["health_checks"][0]["http_health_check"]["path"] == "/health"
    assert pool["outlier_detection"]["consecutive_local_origin_failure"] == 1
    route = _routes(cfg)[0]["route"]
    assert route["cluster"] == "pool"
    retry = route["retry_policy"]
    assert set(retry["retry_on"].split(",")) == {"connect-failure", "refused-stream", "reset", "retriable-status-codes"}
    assert retry["retriable_status_codes"] == [500, 502, 503, 504]
    assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    # FailClose is the route table's: no pick -> 503; the filter itself never cuts a stream.
    assert "direct_response" in _routes(cfg)[-1]
    assert _ext_proc(cfg)["typed_config"]["failure_mode_allow"] is True


def test_fail_open_falls_back_to_the_health_checked_pool() -> None:
    cfg = render_envoy_config(EnvoyConfigParams(failure_mode="FailOpen", fallback_endpoints=[("127.0.0.1", 1)]))
    assert _routes(cfg)[-1]["route"]["cluster"] == "pool"
    assert "retry_policy" in _routes(cfg)[-1]["route"]
    assert _ext_proc(cfg)["typed_config"]["failure_mode_allow"] is True


def test_fail_open_without_endpoints_is_refused() -> None:
    with pytest.raises(ValueError, match="FailOpen needs the pool"):
        render_envoy_config(EnvoyConfigParams(failure_mode="FailOpen"))


def test_epp_replicas_share_one_health_checked_cluster() -> None:
    cfg = render_envoy_config(EnvoyConfigParams(epp_port=1, epp_replicas=[("127.0.0.1", 2)]))
    epp = _clusters(cfg)["epp"]
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"]
             for e in epp["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert ports == [1, 2]
    assert epp["health_checks"][0]["grpc_health_check"] == {"service_name": "readiness"}
    assert epp["outlier_detection"]["consecutive_local_origin_failure"] == 1


def test_full_duplex_sends_trailers() -> None:
    text = yaml.safe_dump(render_envoy_config(EnvoyConfigParams(request_body_mode="FULL_DUPLEX_STREAMED",
                                                                      response_body_mode="STREAMED")))
    assert "request_trailer_mode: SEND" in text


def test_skipping_request_headers_is_refused() -> None:
    # With the headers skipped, Envoy 1.40 routes on them before the EPP sees the body (the
    # overhead stack's Envoy answered the no-pick 503 and never opened an ext_proc stream).
    with pytest.raises(ValueError, match="request_header_mode 'SKIP' cannot route"):
        EnvoyConfigParams(request_header_mode="SKIP")
