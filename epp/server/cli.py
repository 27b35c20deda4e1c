"""`epp serve`: run the Endpoint Picker."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from epp.admin.options import TOKEN_ENV, AdminOptions
from epp.datastore.inflight import InflightConfig
from epp.flowcontrol.admission import AdmissionConfig
from epp.flowcontrol.saturation import SaturationConfig
from epp.k8s.cli import KubernetesOptions, add_k8s_arguments
from epp.metricsscrape.scraper import ScrapeConfig
from epp.observability.logging import configure_logging
from epp.observability.request_tracing import tracing_config_from_env
from epp.replay.record import add_record_arguments, record_options
from epp.scheduling.registry import ConfigError
from epp.server.tls import TLSOptions, load_pair, parse_bool_flag

log = logging.getLogger("epp.server")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the Endpoint Picker (Envoy ext_proc server)",
        description="Run the Endpoint Picker: the ext_proc gRPC server Envoy calls for every request.")
    p.add_argument("--host", default=os.environ.get("EPP_HOST", "127.0.0.1"),
                   help="address to bind (use 0.0.0.0 in a container); default 127.0.0.1")
    p.add_argument("--grpc-port", type=int, default=9002, help="ext_proc + gRPC health port (9002)")
    p.add_argument("--health-port", type=int, default=9003, help="HTTP /healthz and /readyz (9003)")
    p.add_argument("--grpc-health-port", type=int, default=0,
                   help="plaintext gRPC health (services liveness, readiness) for kubelet gRPC probes; "
                        "0 = off (the ext_proc port serves gRPC health too, over TLS when secure)")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics (9090)")
    p.add_argument("--config", type=Path, default=None,
                   help="EndpointPickerConfig YAML (default: the embedded default config)")
    p.add_argument("--pool-file", type=Path, help="local mode: InferencePool manifest")
    p.add_argument("--endpoints-file", type=Path, help="local mode: the pods (name, ip, port, labels)")
    p.add_argument("--objectives-file", type=Path, action="append", default=[],
                   help="local mode: InferenceObjective / InferenceModel / InferenceModelRewrite "
                        "manifests (repeatable; re-read on change)")
    p.add_argument("--scrape-interval", type=float, default=0.05,
                   help="seconds between metric scrapes of each pod (0.05)")
    p.add_argument("--scrape-idle-interval", type=float, default=0.5,
                   help="longest seconds between scrapes of an idle pod whose metrics do not change "
                        "(0.5; equal to --scrape-interval turns the adaptive interval off)")
    p.add_argument("--scrape-timeout", type=float, default=0.5, help="seconds (0.5)")
    p.add_argument("--staleness-threshold", type=float, default=1.0,
                   help="seconds without fresh metrics before a pod is considered unhealthy (1.0)")
    p.add_argument("--engine", default="vllm", choices=("vllm", "sglang"),
                   help="metric names of the model servers (vllm)")
    p.add_argument("--stream-include-usage", action="store_true",
                   help="add stream_options.include_usage to streaming requests so their token usage is "
                        "counted (epp_usage_* metrics); clients then also get the final usage chunk")
    p.add_argument("--engine-label", default="", metavar="LABEL",
                   help="pod label naming that pod's engine (vllm, sglang): its metric names, for pools "
                        "that mix engines; pods without it use --engine (default: off)")
    p.add_argument("--max-inflight-requests", type=int, default=10_000,
                   help="requests in flight per EPP process before new ones get 503 (10000)")
    p.add_argument("--inflight-timeout", type=float, default=300.0,
                   help="seconds after which an in-flight charge with no completion is released (300)")
    p.add_argument("--default-output-tokens", type=int, default=256,
                   help="expected decode tokens of a request without max_tokens, for token load (256)")
    p.add_argument("--prefill-window", type=float, default=0.5,
                   help="seconds over which a dispatched prompt counts as prefilling, for "
                        "prefill-load-scorer (0.5)")
    p.add_argument("--saturation-queue-depth", type=int, default=5,
                   help="waiting requests at which a pod counts as saturated (5)")
    p.add_argument("--saturation-kv-cache", type=float, default=0.8,
                   help="KV-cache use at which a pod counts as saturated (0.8)")
    p.add_argument("--no-model-discovery", action="store_true",
                   help="do not read /v1/models from the pods (then unknown model names are not refused)")
    # The reference EPP's --tracing; exporter, ratio and collector also from the standard
    # OTEL_TRACES_EXPORTER / OTEL_TRACES_SAMPLER_ARG / OTEL_EXPORTER_OTLP_ENDPOINT variables.
    p.add_argument("--tracing", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="emit OpenTelemetry spans per request and pass traceparent on to the pod "
                        "(default false); see docs/observability.md")
    p.add_argument("--tracing-exporter", choices=("console", "otlp", "none"), default=None,
                   help="where spans go (default: $OTEL_TRACES_EXPORTER or console)")
    p.add_argument("--otlp-endpoint", default=None,
                   help="OTLP/gRPC collector, e.g. http://127.0.0.1:4317 "
                        "(default: $OTEL_EXPORTER_OTLP_ENDPOINT)")
    p.add_argument("--tracing-sample-ratio", type=float, default=None,
                   help="share of new traces sampled, parent-based (default: "
                        "$OTEL_TRACES_SAMPLER_ARG or 0.1, as the reference EPP)")
    p.add_argument("--grpc-transport", choices=("native", "grpcio"), default="native",
                   help="who serves ext_proc: native = HTTP/2 on the event loop (epp/server/h2grpc.py), "
                        "grpcio = the gRPC library's server (default: native)")
    p.add_argument("--max-concurrent-streams", type=int, default=0,
                   help="HTTP/2 streams per Envoy connection (0 = no limit)")
    # The reference EPP's TLS flags (epp/server/tls.py); Go-style `--flag=false` works.
    p.add_argument("--secure-serving", type=_bool, nargs="?", const=True, default=None,
                   metavar="BOOL", help="serve ext_proc over TLS (default: true in Kubernetes mode, "
                                        "false in local mode); --secure-serving=false for plaintext")
    p.add_argument("--cert-path", type=Path, default=None,
                   help="directory with tls.crt and tls.key (a mounted kubernetes.io/tls Secret); "
                        "default: a self-signed certificate generated at start")
    p.add_argument("--enable-cert-reload", type=_bool, nargs="?", const=True, default=True,
                   metavar="BOOL", help="serve a rotated --cert-path pair on new connections (default true)")
    p.add_argument("--shutdown-delay", type=float, default=1.5,
                   help="seconds to keep serving after SIGTERM while health says NOT_SERVING, so the "
                        "gateway moves to another replica first (1.5; 0 for a single EPP)")
    p.add_argument("--workers", type=int, default=int(os.environ.get("EPP_WORKERS", "1")),
                   help="EPP processes sharing the gRPC port (SO_REUSEPORT), one per core (1)")
    p.add_argument("--worker-id", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-count", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--peer-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--api-keys", type=Path, default=None,
                   help="API keys file or mounted Secret directory (tenants, limits); reloaded on change. "
                        "Without it no key is required")
    p.add_argument("--rate-limit-redis", default=None, metavar="URL",
                   help="share per-tenant rate limits through Redis (redis://host:port/db); default: in memory")
    p.add_argument("--response-cache", type=Path, default=None, metavar="FILE",
                   help="exact-response cache rules (ResponseCacheConfig YAML, docs/response-cache.md); "
                        "default: no cache")
    p.add_argument("--response-cache-redis", default=None, metavar="URL",
                   help="keep the response cache in Redis (redis://host:port/db); default: the file's "
                        "storage, else an in-memory LRU per EPP process")
    p.add_argument("--log-level", default=os.environ.get("EPP_LOG_LEVEL", "info"))
    p.add_argument("--log-format", default=os.environ.get("EPP_LOG_FORMAT", "json"), choices=("json", "text"))
    p.add_argument("--validate-config", action="store_true",
                   help="load the config, print the scheduling profiles and exit")
    p.add_argument("--admin-port", type=int, default=None,
                   help="serve the read-only admin API (epp.v1.Admin: Explain, WatchDecisions, GetPool; "
                        "docs/admin-api.md) on this port; default off")
    p.add_argument("--admin-host", default=os.environ.get("EPP_ADMIN_HOST", "127.0.0.1"),
                   help="address of the admin API (127.0.0.1); any non-loopback address requires a token")
    p.add_argument("--admin-token-file", type=Path, default=None,
                   help="file holding the admin API's bearer token (or set $EPP_ADMIN_TOKEN)")
    p.add_argument("--explain-header", type=_bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="answer requests carrying 'x-epp-explain: 1' with an x-epp-explain response "
                        "header summarising the decision (needs Envoy to send response headers); off by default")
    add_k8s_arguments(p)
    add_record_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    from epp.metricsscrape.mapping import ENGINE_MAPPINGS
    from epp.server.app import EPPServer, ServeOptions

    if args.validate_config:
        return _validate(args.config)
    if args.workers < 1:
        log.error("--workers must be >= 1, got %d", args.workers)
        return 2
    if args.workers > 1 and args.worker_id is None:
        from epp.server.workers import run_supervisor

        return run_supervisor(_argv_without_workers(sys.argv), args.workers)
    try:
        k8s = KubernetesOptions.from_args(args)
        scrape = ScrapeConfig(interval=args.scrape_interval, idle_interval=args.scrape_idle_interval,
                              timeout=args.scrape_timeout,
                              staleness_threshold=args.staleness_threshold,
                              mapping=ENGINE_MAPPINGS[args.engine], engine_label=args.engine_label,
                              discover_models=not args.no_model_discovery)
        opts = ServeOptions(
            host=args.host, grpc_port=args.grpc_port, health_port=args.health_port,
            grpc_health_port=args.grpc_health_port,
            metrics_port=args.metrics_port, config=args.config, pool_file=args.pool_file,
            endpoints_file=args.endpoints_file, objectives_files=list(args.objectives_file),
            kubernetes=k8s, scrape=scrape, max_concurrent_streams=args.max_concurrent_streams,
            grpc_transport=args.grpc_transport,
            admission=AdmissionConfig(max_inflight_requests=args.max_inflight_requests),
            inflight=InflightConfig(request_timeout_s=args.inflight_timeout,
                                    default_output_tokens=args.default_output_tokens,
                                    prefill_window_s=args.prefill_window),
            saturation=SaturationConfig(queue_depth_threshold=args.saturation_queue_depth,
                                        kv_cache_util_threshold=args.saturation_kv_cache),
            api_keys=args.api_keys, rate_limit_redis=args.rate_limit_redis,
            response_cache=args.response_cache, response_cache_redis=args.response_cache_redis,
            worker_id=args.worker_id or 0, worker_count=args.worker_count, peer_dir=args.peer_dir,
            tls=tls_options(args, kubernetes_mode=k8s is not None), shutdown_delay_s=args.shutdown_delay,
            tracing=tracing_config_from_env(args.tracing, args.tracing_exporter, args.otlp_endpoint,
                                            args.tracing_sample_ratio),
            admin=admin_options(args), explain_header=bool(args.explain_header),
            record=record_options(args))
        opts.handler.stream_include_usage = args.stream_include_usage
        server = EPPServer(opts)
        asyncio.run(server.run())
    except (ConfigError, ValueError) as e:
        log.error("%s", e)
        return 2
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    return 0


def admin_options(args: argparse.Namespace) -> AdminOptions:
    token = os.environ.get(TOKEN_ENV, "")
    if args.admin_token_file is not None:
        try:
            token = args.admin_token_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"--admin-token-file {args.admin_token_file}: {e.strerror}") from None
        if not token:
            raise ConfigError(f"--admin-token-file {args.admin_token_file} is empty")
    opts = AdminOptions(host=args.admin_host, port=args.admin_port or 0,
                        enabled=args.admin_port is not None, token=token)
    opts.validate()
    return opts


def _bool(value: str) -> bool:
    try:
        return parse_bool_flag(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def tls_options(args: argparse.Namespace, *, kubernetes_mode: bool) -> TLSOptions:
    """--secure-serving defaults to on in Kubernetes mode (as the reference EPP) and to off
    in local mode, where Envoy and the EPP share the host."""
    enabled = kubernetes_mode if args.secure_serving is None else bool(args.secure_serving)
    if args.cert_path is not None and not enabled:
        raise ConfigError("--cert-path needs --secure-serving=true")
    if args.cert_path is not None:
        load_pair(args.cert_path)  # fail at start with a clear message, not at the first handshake
    return TLSOptions(enabled=enabled, cert_path=args.cert_path, reload=bool(args.enable_cert_reload))


def _validate(config: Path | None) -> int:
    from epp.config.loader import load_scheduler_config
    from epp.datastore.datastore import Datastore
    from epp.flowcontrol.config import build_flow_control_config
    from epp.scheduling.registry import PluginContext

    try:
        ctx = PluginContext(Datastore(), source=str(config))
        cfg = load_scheduler_config(config, ctx)
        flow = build_flow_control_config(cfg.extra_sections, cfg.plugins, ctx, cfg.source)
    except ConfigError as e:
        print(f"error: {e}")
        return 2
    print(f"{config or 'embedded default config'}: OK")
    for name, profile in cfg.profiles.items():
        print(f"  profile {name}: {profile}")
    bands = ", ".join(str(p) for p in sorted(flow.bands, reverse=True)) or "from defaultPriorityBand only"
    print(f"  saturation detector: {flow.detector.name}; flow control: "
          f"{'on (priority bands: ' + bands + ')' if flow.enabled else 'off'}")
    return 0


def _argv_without_workers(argv: list[str]) -> list[str]:
    """The `epp serve` arguments minus --workers (each worker is a single process)."""
    args = argv[argv.index("serve") + 1:] if "serve" in argv else argv[1:]
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if a.startswith("--workers="):
            continue
        out.append(a)
    return out
