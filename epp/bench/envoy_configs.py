"""Envoy bootstraps of the benchmark: Envoy's own load balancers, and instant upstreams.

- `lb_envoy_config`: a listener that routes every request to a STATIC cluster of the pods
  with one of Envoy's load-balancing policies (ROUND_ROBIN, LEAST_REQUEST, ...), no EPP: the
  baseline the EPP has to beat. Its HTTP filter chain is the EPP front Envoy's chain
  (header mutation, buffer, router) minus ext_proc, taken from the same renderer, so a
  comparison of the two measures the EPP and nothing else.
- `instant_upstream_config`: one Envoy answering on many loopback ports with direct_response
  (a canned chat completion, plus a vLLM-shaped /metrics and /v1/models so the EPP's scraper
  sees healthy idle pods). It is the cheapest upstream there is, so what the overhead
  benchmark measures is the router path, not the model server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml

from epp.localstack.envoy_config import EnvoyConfigParams, render_envoy_config

ENVOY_LB_POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH")

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def epp_chain_without_ext_proc() -> tuple[list[dict[str, Any]], int]:
    """(HTTP filters, per-connection buffer limit) of the EPP's front Envoy, minus ext_proc."""
    rendered = render_envoy_config(EnvoyConfigParams())
    listener = rendered["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"]
    return filters, int(listener.get("per_connection_buffer_limit_bytes", 0))


def _listener(name: str, port: int, routes: list[dict[str, Any]],
              filters: list[dict[str, Any]] | None = None, buffer_limit: int = 0) -> dict[str, Any]:
    listener: dict[str, Any] = {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": _HCM,
                "stat_prefix": name,
                "codec_type": "AUTO",
                "route_config": {"name": name, "virtual_hosts": [
                    {"name": name, "domains": ["*"], "routes": routes}]},
                "http_filters": filters or [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
                "stream_idle_timeout": "600s",
                "request_timeout": "0s",
            },
        }]}],
    }
    if buffer_limit:
        listener["per_connection_buffer_limit_bytes"] = buffer_limit
    return listener


def _admin(port: int) -> dict[str, Any]:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def lb_envoy_config(listen_port: int, admin_port: int, pods: Sequence[tuple[str, int]],
                    lb_policy: str = "ROUND_ROBIN", epp_chain: bool = True) -> dict[str, Any]:
    """`epp_chain`: the EPP front Envoy's filters minus ext_proc (False: the router alone)."""
    if lb_policy not in ENVOY_LB_POLICIES:
        raise ValueError(f"unknown Envoy lb_policy {lb_policy!r}; known: {', '.join(ENVOY_LB_POLICIES)}")
    if not pods:
        raise ValueError("an Envoy load-balancer config needs at least one pod")
    route: dict[str, Any] = {"match": {"prefix": "/"}, "route": {"cluster": "pool", "timeout": "600s"}}
    cluster: dict[str, Any] = {
        "name": "pool",
        "type": "STATIC",
        "connect_timeout": "2s",
        "lb_policy": lb_policy,
        # Defaults (1024) would queue a saturation sweep inside Envoy instead of at the pods.
        "circuit_breakers": {"thresholds": [{"max_connections": 100000, "max_pending_requests": 100000,
                                             "max_requests": 100000}]},
        "load_assignment": {"cluster_name": "pool", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
            for host, port in pods]}]},
    }
    if lb_policy == "RING_HASH":
        route["route"]["hash_policy"] = [{"header": {"header_name": "x-session-id"}}]
    return {
        "admin": _admin(admin_port),
        "static_resources": {"listeners": [_listener("lb", listen_port, [route], *(
            epp_chain_without_ext_proc() if epp_chain else (None, 0)))], "clusters": [cluster]},
    }


def vllm_metrics_text(model: str, num_gpu_blocks: int = 28_000, block_size: int = 16) -> str:
    """An idle vLLM pod's /metrics: what the EPP scraper needs to call a pod healthy."""
    return (
        f'vllm:num_requests_waiting{{model_name="{model}"}} 0.0\n'
        f'vllm:num_requests_running{{model_name="{model}"}} 0.0\n'
        f'vllm:kv_cache_usage_perc{{model_name="{model}"}} 0.0\n'
        f'vllm:cache_config_info{{block_size="{block_size}",num_gpu_blocks="{num_gpu_blocks}"}} 1.0\n'
        f'vllm:lora_requests_info{{max_lora="1",running_lora_adapters="",waiting_lora_adapters=""}} 1.0\n'
    )


def instant_completion_body(model: str) -> str:
    return json.dumps({
        "id": "cmpl-instant", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }, separators=(",", ":"))


def instant_upstream_config(ports: Sequence[int], admin_port: int, model: str) -> dict[str, Any]:
    models = json.dumps({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "bench"}]})
    routes: list[dict[str, Any]] = [
        {"match": {"path": "/metrics"}, "direct_response": {
            "status": 200, "body": {"inline_string": vllm_metrics_text(model)}}},
        {"match": {"path": "/v1/models"}, "direct_response": {"status": 200, "body": {"inline_string": models}}},
        {"match": {"prefix": "/"}, "direct_response": {
            "status": 200, "body": {"inline_string": instant_completion_body(model)}}},
    ]
    return {
        "admin": _admin(admin_port),
        "static_resources": {"listeners": [_listener(f"pod{i}", port, routes) for i, port in enumerate(ports)]},
    }


def to_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)
