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


def _ext_proc(params: EnvoyConfigParams) -> dict[str, Any]:
    hcm = render_envoy_config(params)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = hcm["typed_config"]["http_filters"]
    cfg: dict[str, Any] = next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")["typed_config"]
    return cfg


def test_body_modes() -> None:
    with pytest.raises(ValueError, match="cannot route"):
        EnvoyConfigParams(request_body_mode="NONE")  # type: ignore[arg-type]
    for mode in ("STREAMED", "BUFFERED", "FULL_DUPLEX_STREAMED"):
        for bodies in ("NONE", "STREAMED"):
            ext_proc = _ext_proc(EnvoyConfigParams(request_body_mode=mode,  # type: ignore[arg-type]
                                                   response_body_mode=bodies))  # type: ignore[arg-type]
            processing = ext_proc["processing_mode"]
            assert processing["request_body_mode"] == mode
            # Envoy reads the flag in STREAMED mode only; without it STREAMED could not route.
            assert ext_proc["send_body_without_waiting_for_header_response"] is (mode == "STREAMED")
            assert processing["response_header_mode"] == ("SKIP" if bodies == "NONE" else "SEND")
            # A streamed mode's stream would end at the pick: the trailers keep it to the end.
            keep_open = mode != "BUFFERED" and bodies == "NONE"
            assert processing["response_trailer_mode"] == ("SEND" if keep_open else "SKIP")
    # One round trip by default; BUFFERED where Envoy must honour per-request mode overrides.
    assert EnvoyConfigParams().request_body_mode == "STREAMED"
    assert EnvoyConfigParams(response_cache=True).request_body_mode == "BUFFERED"
    assert EnvoyConfigParams(mode_overrides=True).request_body_mode == "BUFFERED"
    for mode in ("STREAMED", "FULL_DUPLEX_STREAMED"):
        with pytest.raises(ValueError, match="need request_body_mode BUFFERED"):
            EnvoyConfigParams(response_cache=True, request_body_mode=mode)  # type: ignore[arg-type]
