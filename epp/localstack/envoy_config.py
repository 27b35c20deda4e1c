"""Envoy bootstrap for the local stack, tests and benchmarks.

Listener -> ext_proc (the EPP) -> router. When the pool's endpoints are known (the local
stack, tests, benchmarks) requests go to the `pool` cluster, whose override-host load-balancing
policy (envoy.load_balancing_policies.override_host) reads the EPP's pick and its fallbacks from
the `envoy.lb` dynamic metadata key `x-gateway-destination-endpoint` ("ip:port,ip:port,...").
The route retries a request that never started (connect failure, refused stream, reset before
response headers) on the next endpoint of that list; the pool has active health checks and
outlier ejection, so FailOpen (no metadata: plain least-request) avoids a dead pod too.
Without known endpoints requests go to an ORIGINAL_DST cluster on the EPP's header (one host,
no fallback).

Failure modes are enforced by the route table, not by ext_proc: the filter always runs with
failure_mode_allow, so the EPP dying or restarting after its decision never cuts a response
that is already flowing (see docs/reliability.md). A request the EPP did not decide reaches the
router without the destination header: FailClose answers it with a 503, FailOpen sends it to
the pool cluster's own load balancer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

DESTINATION_HEADER = "x-gateway-destination-endpoint"
# Request headers that steer the upstream. Envoy drops client-sent copies before ext_proc
# (FailOpen: also when the EPP is down); the EPP removes them again in its own answer.
STRIPPED_REQUEST_HEADERS = (DESTINATION_HEADER, "x-prefiller-host-port", "x-prefiller-url")
METADATA_NAMESPACE = "envoy.lb"

# How Envoy hands the request body to the EPP, which needs all of it (model, prompt) to pick:
# - STREAMED (default), always with send_body_without_waiting_for_header_response: headers and
#   body go out back to back and Envoy holds both until the EPP answers, one round trip.
# - BUFFERED: Envoy sends the body only after the EPP answered the headers, two round trips
#   (Envoy ignores send_body_without_waiting_for_header_response in this mode). It is the one
#   mode in which Envoy honours per-request mode overrides (response cache, eviction), so
#   those get it.
# - FULL_DUPLEX_STREAMED (GIE's): one round trip too, but the EPP must hand the body back and
#   Envoy keeps no copy of it, so an EPP lost mid-request cannot be failed open.
# In both streamed modes Envoy 1.40 ends the ext_proc stream as soon as it has nothing left to
# send (measured, tests/integration/test_envoy_modes.py): with the response side off that is
# right after the pick, and the EPP, which releases a request's in-flight charge when its stream
# ends, would release it at dispatch. Asking for the response trailers keeps the stream until
# the response ends; vLLM sends none, so it costs no message.
BodyMode = Literal["STREAMED", "BUFFERED", "FULL_DUPLEX_STREAMED"]
BODY_MODES: tuple[BodyMode, ...] = ("STREAMED", "BUFFERED", "FULL_DUPLEX_STREAMED")


@dataclass(slots=True)
class EnvoyConfigParams:
    listen_port: int = 8081
    listen_address: str = "127.0.0.1"
    admin_port: int = 9901
    epp_address: str = "127.0.0.1"
    epp_port: int = 9002
    failure_mode: Literal["FailOpen", "FailClose"] = "FailClose"
    # Pool endpoints (host, port): the `pool` cluster (override-host LB, health checks, outlier
    # ejection) that serves the EPP's picks and the FailOpen fallback. Empty: ORIGINAL_DST.
    fallback_endpoints: list[tuple[str, int]] = field(default_factory=list)
    # More EPP replicas (host, port) beside epp_address:epp_port: active-active, one cluster.
    epp_replicas: list[tuple[str, int]] = field(default_factory=list)
    # Retries of an ext_proc stream that could not be opened (dead EPP replica).
    epp_retries: int = 2
    # Attempts after the first for a request that never started (dead pod): the fallbacks.
    upstream_retries: int = 3
    # Pool health checking (GET /health); interval in ms.
    health_check_interval_ms: int = 500
    # Request headers go to the EPP: "SEND" only. "SKIP" is refused below: Envoy then lets the
    # headers through to the router before the body reaches the EPP, so no pick can be applied
    # (Envoy 1.40: ext_proc never opens a stream and the router answers the no-pick 503).
    request_header_mode: Literal["SEND", "SKIP"] = "SEND"
    # None: STREAMED, or BUFFERED when mode overrides are needed (response_cache, mode_overrides).
    request_body_mode: BodyMode | None = None
    # None: SEND when response bodies go to the EPP, else SKIP.
    response_header_mode: Literal["SEND", "SKIP"] | None = None
    response_body_mode: Literal["NONE", "STREAMED", "BUFFERED"] = "NONE"
    message_timeout_ms: int = 2000
    epp_max_concurrent_streams: int = 32
    max_request_bytes: int = 4 * 1024 * 1024
    # Upstream timeout for LLM requests; 0 disables (long streaming generations).
    route_timeout_s: int = 600
    access_log: bool = False
    # Tests: a static subset hint (envoy.lb.subset_hint) set on every request, as a gateway
    # that pre-filters endpoints would.
    subset_hint: list[str] | None = None
    # TLS to the EPP (`epp serve --secure-serving`): the CA file Envoy verifies the EPP's
    # certificate with, and the name it must carry. None: plaintext HTTP/2.
    epp_tls_ca_file: str | None = None
    epp_tls_sni: str = "localhost"
    # The EPP's response cache (docs/response-cache.md) fills through per-request mode overrides,
    # which Envoy honours only on headers messages and only without
    # send_body_without_waiting_for_header_response and FULL_DUPLEX_STREAMED.
    response_cache: bool = False
    # Per-request mode overrides for other features too (flow control's eviction asks for the
    # response bodies of evictable requests only): the same Envoy preconditions.
    mode_overrides: bool = False

    def __post_init__(self) -> None:
        if self.request_header_mode != "SEND":
            raise ValueError(f"request_header_mode {self.request_header_mode!r} cannot route: with the request "
                             "headers skipped Envoy routes on them before the EPP has seen the body; use SEND")
        overrides = self.response_cache or self.mode_overrides
        if self.request_body_mode is None:
            self.request_body_mode = "BUFFERED" if overrides else "STREAMED"
        if self.response_header_mode is None:
            self.response_header_mode = "SKIP" if self.response_body_mode == "NONE" else "SEND"
        if self.request_body_mode not in BODY_MODES:
            raise ValueError(
                f"request_body_mode {self.request_body_mode!r} cannot route: the EPP picks the pod "
                "from the request body, so Envoy must hold the request until the whole body has "
                f"been processed; use one of {', '.join(BODY_MODES)}")
        if overrides and self.request_body_mode != "BUFFERED":
            raise ValueError("mode overrides (response_cache) need request_body_mode BUFFERED: Envoy "
                             f"ignores mode_override in {self.request_body_mode} (with "
                             "send_body_without_waiting_for_header_response, or full duplex)")


def _epp_transport_socket(p: EnvoyConfigParams) -> dict[str, Any]:
    """The upstream TLS context of the EPP cluster (empty: plaintext). ALPN h2 because gRPC
    needs HTTP/2 and the EPP's TLS server negotiates it; the certificate is verified against
    the given CA and name, unlike the gateways that accept the EPP's self-signed one."""
    if p.epp_tls_ca_file is None:
        return {}
    return {"transport_socket": {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": p.epp_tls_sni,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "validation_context": {
                    "trusted_ca": {"filename": p.epp_tls_ca_file},
                    "match_typed_subject_alt_names": [
                        {"san_type": "DNS", "matcher": {"exact": p.epp_tls_sni}}],
                },
            },
        },
    }}


def render_envoy_config(p: EnvoyConfigParams) -> dict[str, Any]:
    fail_open = p.failure_mode == "FailOpen"
    ext_proc: dict[str, Any] = {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": "epp"},
                "timeout": f"{p.message_timeout_ms / 1000:.3f}s",
                **({"retry_policy": {
                    # A stream that fails to open (dead replica, refused) is opened again on another
                    # replica (previous_hosts), so a replica's death loses no decision.
                    "retry_on": "connect-failure,refused-stream,reset,unavailable",
                    "num_retries": p.epp_retries,
                    "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.05s"},
                    "retry_host_predicate": [{
                        "name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
                                     "PreviousHostsPredicate"}}],
                    "host_selection_retry_max_attempts": 3}} if p.epp_retries > 0 else {}),
            },
            # Always allow: a dead or restarting EPP must not cut a response already flowing.
            # FailClose is the route table's job (no destination header -> 503, below).
            "failure_mode_allow": True,
            "status_on_error": {"code": 503},
            "message_timeout": f"{p.message_timeout_ms / 1000:.3f}s",
            "processing_mode": {
                "request_header_mode": p.request_header_mode,
                "request_body_mode": p.request_body_mode,
                "response_header_mode": p.response_header_mode,
                "response_body_mode": p.response_body_mode,
                # Envoy requires trailers to be sent in full-duplex mode.
                "request_trailer_mode": "SEND" if p.request_body_mode == "FULL_DUPLEX_STREAMED" else "SKIP",
                # Keeps a streamed mode's ext_proc stream open until the response ends (BodyMode).
                "response_trailer_mode": "SEND" if p.request_body_mode != "BUFFERED"
                and p.response_body_mode == "NONE" else "SKIP",
            },
            # The response cache asks for a cacheable request's response (docs/response-cache.md).
            "allow_mode_override": True,
            # Forward the gateway's candidate endpoints (GIE subset hint) to the EPP.
            # and accept the EPP's pick + fallbacks into envoy.lb (the override-host policy reads
            # them there; unlisted namespaces are dropped).
            "metadata_options": {"forwarding_namespaces": {"untyped": ["envoy.lb.subset_hint"]},
                                 "receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}},
            # Only read in STREAMED mode (Envoy ignores it in the others).
            "send_body_without_waiting_for_header_response": p.request_body_mode == "STREAMED",
            # The route was chosen before the EPP set the destination header: re-match it.
            "route_cache_action": "CLEAR",
            "mutation_rules": {"allow_all_routing": True},
        },
    }
    pool = bool(p.fallback_endpoints)
    dest_route: dict[str, Any] = {
        "match": {"prefix": "/", "headers": [{"name": DESTINATION_HEADER, "present_match": True}]},
        "route": {"cluster": "pool" if pool else "original_destination", "timeout": f"{p.route_timeout_s}s"},
    }
    if pool and p.upstream_retries > 0:
        dest_route["route"]["retry_policy"] = _retry_policy(p.upstream_retries)
    routes: list[dict[str, Any]] = [dest_route]
    if fail_open:
        fallback_route: dict[str, Any] = {"cluster": "pool", "timeout": f"{p.route_timeout_s}s"}
        if p.upstream_retries > 0:
            fallback_route["retry_policy"] = _retry_policy(p.upstream_retries)
        routes.append({"match": {"prefix": "/"}, "route": fallback_route})
    else:
        routes.append({"match": {"prefix": "/"}, "direct_response": {
            "status": 503,
            "body": {"inline_string": '{"error":{"message":"no endpoint was picked for this request",'
                                      '"type":"ServiceUnavailable","code":503}}'}}})
    subset_filter: list[dict[str, Any]] = []
    if p.subset_hint is not None:
        subset_filter.append({"name": "envoy.filters.http.set_metadata", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
            "metadata": [{"metadata_namespace": "envoy.lb.subset_hint",
                          "value": {"x-gateway-destination-endpoint-subset": list(p.subset_hint)}}]}})
    hcm: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                 "HttpConnectionManager",
        "stat_prefix": "llm",
        "codec_type": "AUTO",
        "route_config": {"name": "llm", "virtual_hosts": [{"name": "llm", "domains": ["*"], "routes": routes}]},
        # A client must not choose the pod itself: drop the routing headers it sent
        # (x-gateway-destination-endpoint and every x-gateway-destination-endpoint-*) before
        # the route is picked. An HTTP filter would run after route selection, so with
        # FailOpen and the EPP down the route picked on the client's header would stand.
        "early_header_mutation_extensions": [{
            "name": "envoy.http.early_header_mutation.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3."
                         "HeaderMutation",
                "mutations": [
                    *({"remove": name} for name in STRIPPED_REQUEST_HEADERS),
                    {"remove_on_match": {"key_matcher": {"prefix": DESTINATION_HEADER}}}]}}],
        "http_filters": [
            # Bodies above the limit are refused with 413 (as an OpenAI error, see
            # local_reply_config) before they reach the EPP.
            {"name": "envoy.filters.http.buffer", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": p.max_request_bytes}},
            *subset_filter,
            ext_proc,
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
        # Envoy's own error replies (oversize body, upstream unreachable) in the OpenAI error
        # shape. Filters pick them by status / response flag so that the EPP's own JSON
        # ImmediateResponses (which are local replies too) are left untouched.
        "local_reply_config": {"mappers": [
            {"filter": {"status_code_filter": {"comparison": {
                "op": "EQ", "value": {"default_value": 413, "runtime_key": "epp.local_reply.413"}}}},
             "body_format_override": _openai_error_format()},
            {"filter": {"response_flag_filter": {"flags": ["UH", "UF", "UO", "URX", "UT", "UC", "NR", "DC"]}},
             "body_format_override": _openai_error_format()},
        ]},
        "stream_idle_timeout": "600s",
        "request_timeout": "0s",
    }
    # Which endpoint the EPP picked and which one served: cheap, and it makes routing visible.
    hcm["route_config"]["response_headers_to_add"] = [
        {"header": {"key": "x-gateway-destination-endpoint-served", "value": "%UPSTREAM_HOST%"},
         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    if p.access_log:
        hcm["access_log"] = [{"name": "envoy.access_loggers.stdout", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"text_format_source": {"inline_string":
                "%START_TIME% %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% "
                "%RESPONSE_CODE_DETAILS% %DURATION%ms upstream=%UPSTREAM_HOST% "
                "picked=%REQ(x-gateway-destination-endpoint)% lb=%DYNAMIC_METADATA(envoy.lb)% "
                "attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT% id=%REQ(x-request-id)%\n"}}}}]
    clusters: list[dict[str, Any]] = [
        {
            "name": "epp",
            "type": "STATIC",
            "connect_timeout": "1s",
            "lb_policy": "ROUND_ROBIN",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    # Bounded streams per connection: under load Envoy opens more connections,
                    # which SO_REUSEPORT spreads over the EPP's worker processes.
                    "explicit_http_config": {"http2_protocol_options": {
                        "max_concurrent_streams": p.epp_max_concurrent_streams}},
                }
            },
            "load_assignment": {"cluster_name": "epp", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                for host, port in [(p.epp_address, p.epp_port), *p.epp_replicas]]}]},
            **_epp_transport_socket(p),
            # A dead replica (or the restarting single EPP) is found by its gRPC health service
            # and by the first refused connection, so new streams go to a live replica at once.
            "health_checks": [{
                "timeout": "1s", "interval": f"{p.health_check_interval_ms / 1000:.3f}s",
                "no_traffic_interval": f"{p.health_check_interval_ms / 1000:.3f}s",
                "unhealthy_threshold": 2, "healthy_threshold": 1,
                # Readiness (the reference EPP's service name): it drops while the EPP drains after
                # SIGTERM, but not when the pool has no healthy pod, so such an EPP is still asked
                # and answers with its own error (see epp/observability/grpc_health.py).
                "grpc_health_check": {"service_name": "readiness"}}],
            # Short ejection: a restarted EPP is back in a second or two.
            "outlier_detection": _outlier_detection(ejection_s=1),
            "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
            # Every request in flight holds a stream to the EPP, and a replica's death sends a
            # burst of new streams to retry at once: Envoy's defaults (1,024 requests, 3
            # concurrent retries) would fail the 4th retry and the 1,025th request's decision.
            "circuit_breakers": _circuit_breakers(),
        },
        {
            "name": "original_destination",
            "type": "ORIGINAL_DST",
            "connect_timeout": "2s",
            "lb_policy": "CLUSTER_PROVIDED",
            "original_dst_lb_config": {"use_http_header": True, "http_header_name": DESTINATION_HEADER},
            "cleanup_interval": "60s",
            "circuit_breakers": _circuit_breakers(),
        },
    ]
    if pool:
        clusters.append(_pool_cluster(p))
    elif fail_open:
        raise ValueError("FailOpen needs the pool's endpoints (fallback_endpoints)")
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p.admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "llm",
                "address": {"socket_address": {"address": p.listen_address, "port_value": p.listen_port}},
                "per_connection_buffer_limit_bytes": p.max_request_bytes + 65536,
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": hcm}]}],
            }],
            "clusters": clusters,
        },
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
                         "DownstreamConnectionsConfig",
                "max_active_downstream_connections": 50000}}]},
    }


def _pool_cluster(p: EnvoyConfigParams) -> dict[str, Any]:
    """The pool: the EPP's pick and fallbacks via override-host, least-request without them."""
    interval = f"{p.health_check_interval_ms / 1000:.3f}s"
    return {
        "name": "pool",
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": "pool", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": h, "port_value": port}}}}
            for h, port in p.fallback_endpoints]}]},
        "load_balancing_policy": {"policies": [{"typed_extension_config": {
            "name": "envoy.load_balancing_policies.override_host",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3."
                         "OverrideHost",
                # Metadata only: the header names just the pick, the metadata the whole
                # "pick,fallback,..." list that a retry walks down.
                "override_host_sources": [{"metadata": {
                    "key": METADATA_NAMESPACE, "path": [{"key": DESTINATION_HEADER}]}}],
                "fallback_policy": {"policies": [{"typed_extension_config": {
                    "name": "envoy.load_balancing_policies.least_request",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.load_balancing_policies."
                                              "least_request.v3.LeastRequest"}}}]},
            }}}]},
        "health_checks": [{
            "timeout": "1s", "interval": interval, "no_traffic_interval": interval,
            "unhealthy_threshold": 2, "healthy_threshold": 1,
            "http_health_check": {"path": "/health"}}],
        "outlier_detection": _outlier_detection(ejection_s=5),
        "circuit_breakers": _circuit_breakers(),
    }


def _circuit_breakers() -> dict[str, Any]:
    """Limits far above any load one Envoy carries: Envoy's defaults (1,024 connections, pending
    and active requests, 3 concurrent retries per cluster) are sized for ordinary upstreams. A
    fresh dict per cluster, so the YAML has no anchors."""
    return {"thresholds": [{"max_connections": 100000, "max_pending_requests": 100000,
                            "max_requests": 100000, "max_retries": 1000}]}


def _outlier_detection(ejection_s: int) -> dict[str, Any]:
    # A refused or reset connection (local-origin failure) ejects the host at once; 5xx from a
    # live server (e.g. a pod answering 500s) eject it after a few in a row.
    return {"split_external_local_origin_errors": True, "consecutive_local_origin_failure": 1,
            "consecutive_5xx": 5, "consecutive_gateway_failure": 3, "interval": "1s",
            "base_ejection_time": f"{ejection_s}s", "max_ejection_percent": 100,
            "enforcing_consecutive_local_origin_failure": 100}


def _retry_policy(retries: int) -> dict[str, Any]:
    # Only requests that never started: nothing was streamed to the client yet, and a pod that
    # refused, reset before its response headers, or answered a 5xx did no work worth keeping.
    # (A pod failing every request fast looks idle to the EPP, so without this retry it would
    # draw most of the traffic and fail it; docs/reliability.md.)
    return {"retry_on": "connect-failure,refused-stream,reset,retriable-status-codes",
            "retriable_status_codes": [500, 502, 503, 504], "num_retries": retries,
            "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
            # Least-request prefers an idle host, and a dead one looks idle: re-pick often enough
            # that a retry almost surely leaves it (previous_hosts rejects it on each pick).
            "host_selection_retry_max_attempts": 20,
            "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.1s"}}


def _openai_error_format() -> dict[str, Any]:
    return {"json_format": {"error": {
        "message": "%LOCAL_REPLY_BODY%",
        "type": "%RESPONSE_CODE_DETAILS%",
        "param": None,
        "code": "%RESPONSE_CODE%"}},
        "content_type": "application/json"}


def envoy_config_yaml(p: EnvoyConfigParams) -> str:
    return yaml.safe_dump(render_envoy_config(p), sort_keys=False)


# The configs checked in under envoy/ (regenerate with `python -m epp.localstack.envoy_config`;
# tests/unit/localstack/test_envoy_config.py fails when they drift).
CHECKED_IN: dict[str, EnvoyConfigParams] = {
    "envoy-local.yaml": EnvoyConfigParams(
        fallback_endpoints=[("127.0.0.1", 8001), ("127.0.0.1", 8002), ("127.0.0.1", 8003)]),
    "envoy-local-failopen.yaml": EnvoyConfigParams(
        failure_mode="FailOpen",
        fallback_endpoints=[("127.0.0.1", 8001), ("127.0.0.1", 8002), ("127.0.0.1", 8003)]),
    "envoy-response-cache.yaml": EnvoyConfigParams(
        response_cache=True,
        fallback_endpoints=[("127.0.0.1", 8001), ("127.0.0.1", 8002), ("127.0.0.1", 8003)]),
    "envoy-full-duplex.yaml": EnvoyConfigParams(
        request_body_mode="FULL_DUPLEX_STREAMED",
        fallback_endpoints=[("127.0.0.1", 8001), ("127.0.0.1", 8002), ("127.0.0.1", 8003)]),
}

_HEADER = ("# Generated by `python -m epp.localstack.envoy_config` from epp/localstack/envoy_config.py.\n"
           "# Envoy listener :{listen}, EPP ext_proc at 127.0.0.1:{epp}, failure mode {mode}.\n")


def checked_in_text(name: str) -> str:
    p = CHECKED_IN[name]
    return _HEADER.format(listen=p.listen_port, epp=p.epp_port, mode=p.failure_mode) + envoy_config_yaml(p)




# --- several pools behind one gateway (docs/multi-model.md) -----------------------------------

MODEL_HEADER = "x-gateway-model-name"  # GIE's body-based router header (X-Gateway-Model-Name)
EXT_PROC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"


@dataclass(slots=True)
class PoolRoute:
    """One InferencePool behind the gateway: the models it serves, its EPP and its pods."""

    name: str
    models: list[str]
    epp_port: int
    endpoints: list[tuple[str, int]]
    epp_address: str = "127.0.0.1"


@dataclass(slots=True)
class MultiPoolParams:
    """One listener, the body-based router first, then one ext_proc whose EPP is chosen per
    route (ExtProcPerRoute overrides.grpc_service), as an HTTPRoute with one rule per model
    (header X-Gateway-Model-Name) onto one InferencePool each would be programmed."""

    pools: list[PoolRoute]
    bbr_port: int = 9004
    bbr_address: str = "127.0.0.1"
    listen_port: int = 8081
    admin_port: int = 9901
    failure_mode: Literal["FailOpen", "FailClose"] = "FailClose"
    # The EPPs see responses (usage accounting: tokens per model, target model and tenant).
    response_body_mode: Literal["NONE", "STREAMED", "BUFFERED"] = "STREAMED"
    message_timeout_ms: int = 2000
    access_log: bool = False

    def __post_init__(self) -> None:
        if not self.pools:
            raise ValueError("MultiPoolParams needs at least one pool")
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        for p in self.pools:
            if not p.models or not p.endpoints:
                raise ValueError(f"pool {p.name!r}: needs models and endpoints")


def _per_route_epp(cluster: str) -> dict[str, Any]:
    return {"epp": {"@type": EXT_PROC_PER_ROUTE, "overrides": {"grpc_service": {
        "envoy_grpc": {"cluster_name": cluster}}}}}


def render_multi_pool_config(p: MultiPoolParams) -> dict[str, Any]:
    """The single-pool bootstrap of the first pool, widened to every pool: clusters
    epp-<pool> and pool-<pool> per pool, a `bbr` ext_proc in front, model routes."""
    import copy

    first = p.pools[0]
    base = render_envoy_config(EnvoyConfigParams(
        listen_port=p.listen_port, admin_port=p.admin_port, epp_address=first.epp_address,
        epp_port=first.epp_port, failure_mode=p.failure_mode, fallback_endpoints=first.endpoints,
        response_body_mode=p.response_body_mode,
        response_header_mode="SKIP" if p.response_body_mode == "NONE" else "SEND",
        message_timeout_ms=p.message_timeout_ms, access_log=p.access_log))
    resources = base["static_resources"]
    hcm = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    epp_template = next(c for c in resources["clusters"] if c["name"] == "epp")
    pool_template = next(c for c in resources["clusters"] if c["name"] == "pool")
    clusters: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    for pool in p.pools:
        epp_cluster = copy.deepcopy(epp_template)
        epp_cluster["name"] = epp_cluster["load_assignment"]["cluster_name"] = f"epp-{pool.name}"
        epp_cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": pool.epp_address, "port_value": pool.epp_port}}}}]}]
        pool_cluster = copy.deepcopy(pool_template)
        pool_cluster["name"] = pool_cluster["load_assignment"]["cluster_name"] = f"pool-{pool.name}"
        pool_cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": h, "port_value": port}}}}
            for h, port in pool.endpoints]}]
        clusters += [epp_cluster, pool_cluster]
        per_route = _per_route_epp(f"epp-{pool.name}")
        for model in pool.models:
            model_match = {"name": MODEL_HEADER, "string_match": {"exact": model}}
            picked = {"prefix": "/", "headers": [model_match, {"name": DESTINATION_HEADER, "present_match": True}]}
            routes.append({"name": f"{pool.name}/{model}", "match": picked, "route": {
                "cluster": f"pool-{pool.name}", "timeout": "600s", "retry_policy": _retry_policy(3)},
                "typed_per_filter_config": per_route})
            # Before the EPP's pick (and when it picked nothing): FailClose 503 / FailOpen the pool's LB.
            undecided: dict[str, Any] = {"name": f"{pool.name}/{model}/undecided",
                                         "match": {"prefix": "/", "headers": [model_match]},
                                         "typed_per_filter_config": per_route}
            if p.failure_mode == "FailOpen":
                undecided["route"] = {"cluster": f"pool-{pool.name}", "timeout": "600s",
                                      "retry_policy": _retry_policy(3)}
            else:
                undecided["direct_response"] = {"status": 503, "body": {"inline_string":
                    '{"error":{"message":"no endpoint was picked for this request","type":"ServiceUnavailable",'
                    '"code":503}}'}}
            routes.append(undecided)
    # No model header: the BBR answered (or the request has no model, e.g. GET /health).
    routes.append({"name": "no-model", "match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {
        "inline_string": '{"error":{"message":"no inference pool serves this request (no model)",'
                         '"type":"NotFoundError","param":"model","code":"model_not_found"}}'}},
        "typed_per_filter_config": {"epp": {"@type": EXT_PROC_PER_ROUTE, "disabled": True}}})
    hcm["route_config"]["virtual_hosts"][0]["routes"] = routes
    # A client must not pick the pool by sending the model header itself.
    hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"].insert(0, {"remove": MODEL_HEADER})
    filters = hcm["http_filters"]
    epp_filter = next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")
    epp_filter["name"] = "epp"
    epp_filter["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = f"epp-{first.name}"
    bbr_filter = {"name": "bbr", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "bbr"}, "timeout": f"{p.message_timeout_ms / 1000:.3f}s"},
        # No BBR, no model routing: a 503 rather than a request sent to an arbitrary pool.
        "failure_mode_allow": False,
        "status_on_error": {"code": 503},
        "message_timeout": f"{p.message_timeout_ms / 1000:.3f}s",
        # STREAMED + send_body_without_waiting_for_header_response: one round trip, the headers
        # answered with the model header once the body is complete (BodyMode). The BBR keeps no
        # per-request state past its answer, so Envoy may end its stream right after it.
        "processing_mode": {"request_header_mode": "SEND", "request_body_mode": "STREAMED",
                            "response_header_mode": "SKIP", "response_body_mode": "NONE",
                            "request_trailer_mode": "SKIP", "response_trailer_mode": "SKIP"},
        "send_body_without_waiting_for_header_response": True,
    }}
    filters.insert(filters.index(epp_filter), bbr_filter)
    bbr_cluster = {
        "name": "bbr", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "bbr", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": p.bbr_address, "port_value": p.bbr_port}}}}]}]},
        "circuit_breakers": _circuit_breakers(),
    }
    resources["clusters"] = [bbr_cluster, *clusters]
    return base


def multi_pool_config_yaml(p: MultiPoolParams) -> str:
    return yaml.safe_dump(render_multi_pool_config(p), sort_keys=False)


# `make run MODELS=2` on its documented ports (epp/localstack/multipool.py default_pools).
CHECKED_IN_MULTI: dict[str, MultiPoolParams] = {
    "envoy-multi-model.yaml": MultiPoolParams(pools=[
        PoolRoute("a", ["meta-llama/Llama-3.1-8B-Instruct", "sql-lora", "tweet-summary"], 9002,
                  [("127.0.0.1", 8001), ("127.0.0.1", 8002), ("127.0.0.1", 8003)]),
        PoolRoute("b", ["Qwen/Qwen2.5-7B-Instruct"], 9102,
                  [("127.0.0.1", 8011), ("127.0.0.1", 8012), ("127.0.0.1", 8013)]),
    ]),
}

_MULTI_HEADER = ("# Generated by `python -m epp.localstack.envoy_config` from epp/localstack/envoy_config.py.\n"
                 "# Envoy listener :{listen}, body-based router ext_proc at 127.0.0.1:{bbr}, pools: {pools}.\n")


def checked_in_multi_text(name: str) -> str:
    p = CHECKED_IN_MULTI[name]
    pools = ", ".join(f"{pool.name} (EPP :{pool.epp_port}: {', '.join(pool.models)})" for pool in p.pools)
    return _MULTI_HEADER.format(listen=p.listen_port, bbr=p.bbr_port, pools=pools) + multi_pool_config_yaml(p)


if __name__ == "__main__":
    from pathlib import Path

    out_dir = Path(__file__).resolve().parents[2] / "envoy"
    for file_name in CHECKED_IN:
        (out_dir / file_name).write_text(checked_in_text(file_name))
        print(f"wrote {out_dir / file_name}")
    for file_name in CHECKED_IN_MULTI:
        (out_dir / file_name).write_text(checked_in_multi_text(file_name))
        print(f"wrote {out_dir / file_name}")
