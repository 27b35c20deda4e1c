"""The multi-model Envoy bootstrap: BBR first, one ext_proc whose EPP is picked per route."""

import subprocess
from pathlib import Path
from typing import Any

import pytest

from epp.localstack.envoy_config import (
    CHECKED_IN_MULTI,
    EXT_PROC_PER_ROUTE,
    MODEL_HEADER,
    MultiPoolParams,
    PoolRoute,
    checked_in_multi_text,
    render_multi_pool_config,
)
from epp.localstack.stack import envoy_binary

ENVOY_DIR = Path(__file__).resolve().parents[3] / "envoy"


def _hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[no-any-return]


def _params(**kw: Any) -> MultiPoolParams:
    return MultiPoolParams(pools=[PoolRoute("a", ["m-a", "lora"], 9002, [("127.0.0.1", 8001)]),
                                  PoolRoute("b", ["m-b"], 9102, [("127.0.0.1", 8011)])], **kw)


@pytest.mark.parametrize("name", sorted(CHECKED_IN_MULTI))
def test_checked_in_multi_config_is_current_and_valid(name: str) -> None:
    assert (ENVOY_DIR / name).read_text() == checked_in_multi_text(name), \
        "regenerate with: python -m epp.localstack.envoy_config"
    out = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(ENVOY_DIR / name)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_bbr_runs_before_the_epp_and_cannot_be_skipped() -> None:
    hcm = _hcm(render_multi_pool_config(_params()))
    names = [f["name"] for f in hcm["http_filters"]]
    assert names.index("bbr") < names.index("epp") < names.index("envoy.filters.http.router")
    bbr = next(f for f in hcm["http_filters"] if f["name"] == "bbr")["typed_config"]
    assert bbr["failure_mode_allow"] is False
    assert bbr["processing_mode"]["request_body_mode"] == "BUFFERED"
    removed = [m.get("remove") for m in hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"]]
    assert MODEL_HEADER in removed


def test_each_model_routes_to_its_pool_and_its_epp() -> None:
    cfg = render_multi_pool_config(_params())
    routes = _hcm(cfg)["route_config"]["virtual_hosts"][0]["routes"]
    clusters = {c["name"] for c in cfg["static_resources"]["clusters"]}
    assert clusters == {"bbr", "epp-a", "pool-a", "epp-b", "pool-b"}
    for pool, model in (("a", "m-a"), ("a", "lora"), ("b", "m-b")):
        header = {"name": MODEL_HEADER, "string_match": {"exact": model}}
        mine = [r for r in routes if header in r["match"].get("headers", [])]
        assert len(mine) == 2  # picked (destination header present) and undecided (FailClose 503)
        assert mine[0]["route"]["cluster"] == f"pool-{pool}"
        assert mine[1]["direct_response"]["status"] == 503
        for r in mine:
            override = r["typed_per_filter_config"]["epp"]
            assert override["@type"] == EXT_PROC_PER_ROUTE
            assert override["overrides"]["grpc_service"]["envoy_grpc"]["cluster_name"] == f"epp-{pool}"
    last = routes[-1]
    assert last["direct_response"]["status"] == 404 and last["typed_per_filter_config"]["epp"]["disabled"] is True


def test_fail_open_sends_undecided_requests_to_the_pool() -> None:
    hcm = _hcm(render_multi_pool_config(_params(failure_mode="FailOpen")))
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    undecided = [r for r in routes if r["name"].endswith("/undecided")]
    assert [r["route"]["cluster"] for r in undecided] == ["pool-a", "pool-a", "pool-b"]


def test_bad_params_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        MultiPoolParams(pools=[PoolRoute("a", ["x"], 1, [("h", 1)]), PoolRoute("a", ["y"], 2, [("h", 2)])])
    with pytest.raises(ValueError, match="needs models"):
        MultiPoolParams(pools=[PoolRoute("a", [], 1, [("h", 1)])])
