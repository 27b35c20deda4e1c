"""The generated Envoy config strips client routing headers before the route is picked."""

from __future__ import annotations

from typing import Any

import pytest

from epp.localstack.envoy_config import CHECKED_IN, EnvoyConfigParams, render_envoy_config
from epp.server.extproc import ROUTING_HEADERS


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


@pytest.mark.parametrize("name", sorted(CHECKED_IN))
def test_early_header_mutation_removes_every_routing_header(name: str) -> None:
    hcm = _hcm(render_envoy_config(CHECKED_IN[name]))
    [ext] = hcm["early_header_mutation_extensions"]
    assert ext["name"] == "envoy.http.early_header_mutation.header_mutation"
    mutations = ext["typed_config"]["mutations"]
    # The same names the EPP removes, plus every x-gateway-destination-endpoint-* header.
    assert {m["remove"] for m in mutations if "remove" in m} == set(ROUTING_HEADERS)
    assert {"remove_on_match": {"key_matcher": {"prefix": "x-gateway-destination-endpoint"}}} in mutations
    # Not an HTTP filter: those run after route selection.
    assert "envoy.filters.http.header_mutation" not in [f["name"] for f in hcm["http_filters"]]


def test_streamed_body_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot route"):
        EnvoyConfigParams(request_body_mode="STREAMED")  # type: ignore[arg-type]
    for mode in ("BUFFERED", "FULL_DUPLEX_STREAMED"):
        assert EnvoyConfigParams(request_body_mode=mode).request_body_mode == mode  # type: ignore[arg-type]
