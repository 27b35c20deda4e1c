"""P/D connector protocols: how the sidecar rewrites the request for each leg.

Follows llm-d's routing sidecar (llm-d-inference-scheduler pkg/sidecar/proxy):
- `nixlv2` (default, vLLM NixlConnector): the prefill leg carries
  `kv_transfer_params = {do_remote_decode: true, do_remote_prefill: false, remote_engine_id:
  null, remote_block_ids: null, remote_host: null, remote_port: null}`, `stream: false`, no
  `stream_options`, `max_tokens: 1` (and `max_completion_tokens`/`min_tokens` capped at 1
  when the client sent them). The decode leg is the client's request unchanged except for
  `kv_transfer_params`, copied verbatim from the prefiller's answer (vLLM fills in
  do_remote_prefill: true, remote_engine_id, remote_block_ids, remote_host, remote_port).
- `nixl` (v1, deprecated in llm-d): the same fields at the top level of the body instead of
  inside kv_transfer_params.
- `lmcache` (deprecated in llm-d): prefill with max_tokens 1, then the original request to
  the decoder; KV moves through LMCache, nothing is passed between the legs.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

KV_TRANSFER_PARAMS = "kv_transfer_params"
_NIXL_FIELDS = ("remote_block_ids", "remote_engine_id", "remote_host", "remote_port")


class MissingTransferParams(ValueError):
    """The prefiller's answer lacks what the decoder needs to pull the KV cache."""


class Connector(Protocol):
    name: ClassVar[str]
    # False: the prefiller's answer is not needed (only its success), the decode leg is the
    # original body byte for byte.
    uses_prefill_response: ClassVar[bool]

    def prefill_body(self, request: dict[str, Any]) -> dict[str, Any]:
        """Body of the prefill leg (a new dict; `request` is left untouched)."""
        ...

    def decode_body(self, request: dict[str, Any], prefill_response: dict[str, Any]) -> dict[str, Any]:
        """Body of the decode leg; raises MissingTransferParams when the answer is unusable."""
        ...


def _single_token(request: dict[str, Any]) -> dict[str, Any]:
    body = dict(request)
    body["stream"] = False
    body.pop("stream_options", None)
    body["max_tokens"] = 1
    # Capped only when present: /v1/completions has no max_completion_tokens, and a
    # min_tokens above max_tokens is rejected by vLLM.
    if "max_completion_tokens" in body:
        body["max_completion_tokens"] = 1
    if "min_tokens" in body:
        body["min_tokens"] = 1
    return body


class NixlV2Connector:
    name: ClassVar[str] = "nixlv2"
    uses_prefill_response: ClassVar[bool] = True

    def prefill_body(self, request: dict[str, Any]) -> dict[str, Any]:
        body = _single_token(request)
        body[KV_TRANSFER_PARAMS] = {
            "do_remote_decode": True,
            "do_remote_prefill": False,
            "remote_engine_id": None,
            "remote_block_ids": None,
            "remote_host": None,
            "remote_port": None,
        }
        return body

    def decode_body(self, request: dict[str, Any], prefill_response: dict[str, Any]) -> dict[str, Any]:
        params = prefill_response.get(KV_TRANSFER_PARAMS)
        if not isinstance(params, dict) or not params:
            raise MissingTransferParams(f"prefill response has no {KV_TRANSFER_PARAMS!r} object")
        body = dict(request)
        body[KV_TRANSFER_PARAMS] = params
        return body


class NixlV1Connector:
    name: ClassVar[str] = "nixl"
    uses_prefill_response: ClassVar[bool] = True

    def prefill_body(self, request: dict[str, Any]) -> dict[str, Any]:
        body = _single_token(request)
        body["do_remote_decode"] = True
        return body

    def decode_body(self, request: dict[str, Any], prefill_response: dict[str, Any]) -> dict[str, Any]:
        missing = [f for f in _NIXL_FIELDS if f not in prefill_response]
        if missing:
            raise MissingTransferParams(f"prefill response lacks {', '.join(missing)}")
        body = dict(request)
        body["do_remote_prefill"] = True
        for f in _NIXL_FIELDS:
            body[f] = prefill_response[f]
        return body


class LMCacheConnector:
    name: ClassVar[str] = "lmcache"
    uses_prefill_response: ClassVar[bool] = False

    def prefill_body(self, request: dict[str, Any]) -> dict[str, Any]:
        body = _single_token(request)
        body["max_completion_tokens"] = 1
        return body

    def decode_body(self, request: dict[str, Any], prefill_response: dict[str, Any]) -> dict[str, Any]:
        return request


CONNECTORS: dict[str, type[Connector]] = {
    NixlV2Connector.name: NixlV2Connector,
    NixlV1Connector.name: NixlV1Connector,
    LMCacheConnector.name: LMCacheConnector,
}


def make_connector(name: str) -> Connector:
    cls = CONNECTORS.get(name)
    if cls is None:
        raise ValueError(f"unknown connector {name!r} (known: {', '.join(sorted(CONNECTORS))})")
    return cls()
