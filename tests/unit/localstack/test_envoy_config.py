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


def test_original_dst_cluster_routes_on_the_epp_header() -> None:
    cfg = render_envoy_config(EnvoyConfigParams())
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    od = clusters["original_destination"]
    assert od["type"] == "ORIGINAL_DST"
    assert od["original_dst_lb_config"] == {"use_http_header": True,
                                            "http_header_name": "x-gateway-destination-endpoint"}
    assert "pool_fallback" not in clusters
    assert "direct_response" in _routes(cfg)[-1]


def test_fail_open_falls_back_to_the_pool() -> None:
    cfg = render_envoy_config(EnvoyConfigParams(failure_mode="FailOpen", fallback_endpoints=[("127.0.0.1", 1)]))
    assert _routes(cfg)[-1]["route"]["cluster"] == "pool_fallback"
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    ext_proc = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
    assert ext_proc["typed_config"]["failure_mode_allow"] is True


def test_full_duplex_sends_trailers() -> None:
    text = yaml.safe_dump(render_envoy_config(EnvoyConfigParams(request_body_mode="FULL_DUPLEX_STREAMED")))
    assert "request_trailer_mode: SEND" in text
