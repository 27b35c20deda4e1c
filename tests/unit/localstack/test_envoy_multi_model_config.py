"""The multi-model Envoy bootstrap: BBR first, one ext_proc whose EPP is picked per route."""

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    # One round trip: the headers answered with the model header once the body is complete.
    assert bbr["processing_mode"]["request_body_mode"] == "STREAMED"
    assert bbr["send_body_without_waiting_for_header_response"] is True
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


def test_make_run_models2_plan_matches_the_checked_in_config(tmp_path: Path) -> None:
    """`make run MODELS=2` on its documented ports writes exactly envoy/envoy-multi-model.yaml
    (planned only: nothing is started) and a BBR config naming each pool's endpoints file."""
    from epp.localstack.envoy_config import multi_pool_config_yaml
    from epp.localstack.multipool import MultiPoolStack, MultiStackConfig, default_pools

    stack = MultiPoolStack(MultiStackConfig(pools=default_pools(pods=3), run_dir=tmp_path))
    files = stack.write_files()
    (name,) = CHECKED_IN_MULTI
    assert files["envoy"].read_text() == multi_pool_config_yaml(CHECKED_IN_MULTI[name])
    a, b = stack.pools["a"].cfg, stack.pools["b"].cfg
    assert (a.grpc_port, a.health_port, a.metrics_port, [p.port for p in stack.pools["a"].pods]) == (
        9002, 9003, 9090, [8001, 8002, 8003])
    assert (b.grpc_port, b.health_port, b.metrics_port, [p.port for p in stack.pools["b"].pods]) == (
        9102, 9103, 9190, [8011, 8012, 8013])
    assert not b.kv_events and "--engine" in b.epp_args and b.epp_args[b.epp_args.index("--engine") + 1] == "sglang"
    bbr = yaml.safe_load(files["bbr"].read_text())
    assert [p["endpointsFile"] for p in bbr["pools"]] == [
        str(tmp_path / "pool-a" / "endpoints.yaml"), str(tmp_path / "pool-b" / "endpoints.yaml")]
