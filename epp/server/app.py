"""`epp serve`: wire the datastore, its source, the scrapers, the scheduler and the servers.

One EPP process serves ext_proc + gRPC health on the gRPC port, /healthz and /readyz on the
health port and Prometheus metrics on the metrics port. The EndpointPickerConfig file is
watched and reloaded without a restart (a broken edit is logged and the running config kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from epp.admin.options import AdminOptions
from epp.config.loader import SchedulerConfig, load_scheduler_config, reload_scheduler_config
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.datastore.inflight import SERVICE_KEY as INFLIGHT_KEY
from epp.datastore.inflight import InflightConfig, InflightTracker
from epp.datastore.local import LocalEndpointSource
from epp.flowcontrol.admission import AdmissionConfig, AdmissionController
from epp.flowcontrol.config import build_flow_control_config
from epp.flowcontrol.controller import FlowController
from epp.flowcontrol.metrics import FlowControlMetrics
from epp.flowcontrol.pipeline import AdmissionPipeline, TenantMetrics
from epp.flowcontrol.ratelimit import LimitStore, MemoryLimitStore, RedisLimitStore, TenantLimiter
from epp.flowcontrol.saturation import PoolSaturation, SaturationConfig
from epp.flowcontrol.tenants import TENANT_HEADER, ApiKeyAuth, KeysFileError
from epp.k8s.cli import KubernetesOptions
from epp.k8s.config_watch import ConfigFileWatcher
from epp.metricsscrape.scraper import ScrapeConfig, ScraperManager
from epp.observability.exposition import HttpServer, metrics_app
from epp.observability.grpc_health import GrpcHealthReporter
from epp.observability.health import ReadinessProbe, health_app
from epp.observability.metrics import EPPMetrics
from epp.observability.request_tracing import RequestTracing
from epp.observability.tracing import TracingConfig, setup_tracing
from epp.replay.record import RecordOptions, TraceRecorder, config_text
from epp.responsecache.cache import ResponseCache
from epp.responsecache.config import CacheConfigError, load_cache_config
from epp.responsecache.metrics import CacheMetrics
from epp.rollout.config import SECTION as ROLLOUTS_SECTION
from epp.rollout.config import RolloutPolicy, parse_rollout_policy
from epp.rollout.controller import Rollouts
from epp.scheduling.plugins.pd_metrics import register_pd_metrics
from epp.scheduling.registry import ConfigError, PluginContext
from epp.scheduling.types import LLMRequest, SchedulingResult
from epp.server.errors import RequestError
from epp.server.extproc import ExtProcHandler, HandlerOptions
from epp.server.grpc_server import EXT_PROC_SERVICE, build_grpc_server
from epp.server.h2grpc import H2GrpcServer
from epp.server.peers import SERVICE_KEY as PEER_BUS_KEY
from epp.server.peers import InflightSharing, PeerBus, PeerBusCollector, WorkerMetrics
from epp.server.tls import (
    CertReloader,
    ReloadingSSLContext,
    TLSOptions,
    server_credentials,
    server_ssl_context,
)
from epp.server.usage import UsageMetrics

log = logging.getLogger("epp.server")


@dataclass(slots=True)
class ServeOptions:
    host: str = "127.0.0.1"
    grpc_port: int = 9002
    health_port: int = 9003
    # Plaintext gRPC health (services liveness / readiness) for kubelet gRPC probes, which
    # cannot speak TLS to the ext_proc port; 0 = off (the reference EPP's --grpc-health-port).
    grpc_health_port: int = 0
    metrics_port: int = 9090
    config: Path | None = None
    pool_file: Path | None = None
    endpoints_file: Path | None = None
    objectives_files: list[Path] = field(default_factory=list)
    kubernetes: KubernetesOptions | None = None
    scrape: ScrapeConfig = field(default_factory=ScrapeConfig)
    saturation: SaturationConfig = field(default_factory=SaturationConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    handler: HandlerOptions = field(default_factory=HandlerOptions)
    inflight: InflightConfig = field(default_factory=InflightConfig)
    config_watch_interval_s: float = 1.0
    api_keys: Path | None = None  # keys file / Secret directory (epp/flowcontrol/tenants.py)
    rate_limit_redis: str | None = None  # shared per-tenant limits; None: in memory
    response_cache: Path | None = None  # ResponseCacheConfig file (epp/responsecache); None: no cache
    response_cache_redis: str | None = None  # overrides the file's storage.redis
    max_concurrent_streams: int = 0
    # "native": ext_proc and gRPC health served by epp/server/h2grpc.py on the event loop;
    # "grpcio": by grpc.aio (what served the port before; kept as a fallback).
    grpc_transport: Literal["native", "grpcio"] = "native"
    tls: TLSOptions = field(default_factory=TLSOptions)
    shutdown_grace_s: float = 5.0
    # After SIGTERM, keep accepting new streams this long while health says NOT_SERVING, so
    # Envoy's health checks move new streams to another replica before this one refuses them
    # (a rolling update then loses nothing; docs/reliability.md). 0 with a single EPP.
    shutdown_delay_s: float = 1.5
    # `epp serve --workers N` runs N of these processes on one port; see epp/server/workers.py.
    worker_id: int = 0
    worker_count: int = 1
    peer_dir: Path | None = None
    # OpenTelemetry spans per request (off by default); tests add in-memory exporters.
    tracing: TracingConfig = field(default_factory=TracingConfig)
    span_exporters: list[SpanExporter] = field(default_factory=list)
    # The admin API (epp/admin, docs/admin-api.md) and the opt-in x-epp-explain debug header.
    admin: AdminOptions = field(default_factory=AdminOptions)
    explain_header: bool = False
    record: RecordOptions | None = None  # --record-dir: write a decision trace (epp/replay)


class MetricsObserver:
    """Bridges server and scheduler events to the EPP's Prometheus metrics."""

    def __init__(self, metrics: EPPMetrics, usage: UsageMetrics | None = None) -> None:
        self.metrics = metrics
        self.usage = usage
        # Only an authenticated tenant labels usage (a client-sent header would be unbounded).
        self.trust_tenant = False

    # ServerObserver
    def on_decision(self, request: LLMRequest, result: SchedulingResult, seconds: float) -> None:
        m = self.metrics
        m.series(request.model, request.target_model).on_request()
        m.observe_decision(result.primary_profile, seconds, True)
        primary = result.primary
        if primary is not None and primary.scores:
            m.set_pod_scores(primary.scores)

    def on_rejected(self, request: LLMRequest | None, error: RequestError) -> None:
        if request is not None:
            self.metrics.series(request.model, request.target_model).on_error(error.code or str(error.status))

    def on_complete(self, request: LLMRequest, target: Endpoint, response: dict[str, Any],
                    seconds: float) -> None:
        series = self.metrics.series(request.model, request.target_model)
        status = response.get("status", 0)
        if isinstance(status, int) and status >= 400:
            series.on_error(str(status))
        series.on_done(seconds, response.get("prompt_tokens"), response.get("completion_tokens"))
        # status 0: Envoy did not send us the response (response_header_mode SKIP).
        if self.usage is not None and isinstance(status, int) and 200 <= status < 300:
            tenant = request.headers.get(TENANT_HEADER, "") if self.trust_tenant else ""
            self.usage.record(request.model, request.target_model, tenant, response)

    # PluginTimingObserver
    def observe_plugin(self, extension_point: str, plugin_type: str, plugin_name: str,
                       duration_ns: int) -> None:
        # Eight calls per request: the cached child directly (EPPMetrics.observe_plugin is the same).
        key = (extension_point, plugin_type, plugin_name)
        child = self.metrics.plugin_children.get(key)
        if child is None:
            child = self.metrics.plugin_child(key)
        child.observe(duration_ns / 1e9)


class AdmissionAdapter:
    """The admission controller speaking the server's RequestError."""

    def __init__(self, controller: AdmissionController) -> None:
        self.controller = controller

    def admit(self, request: LLMRequest) -> RequestError | None:
        rejection = self.controller.admit(request)
        if rejection is None:
            return None
        return RequestError(rejection.status, rejection.message, rejection.code,
                            retry_after_s=1 if rejection.status in (429, 503) else None)

    def release(self) -> None:
        self.controller.release()


class EPPServer:
    """The whole EPP process; `await run()` serves until stop() or a signal."""

    def __init__(self, opts: ServeOptions) -> None:
        self.opts = opts
        self.datastore = Datastore()
        self.ctx = PluginContext(self.datastore, source=str(opts.config or "<default config>"))
        # The one in-flight ledger: the server charges and releases, scorers read it.
        self.tracker = InflightTracker(self.datastore, opts.inflight)
        self.ctx.services[INFLIGHT_KEY] = self.tracker
        self.peers: PeerBus | None = None
        self.inflight_sharing: InflightSharing | None = None
        if opts.worker_count > 1:
            if opts.peer_dir is None:
                raise ConfigError("several workers need a peer directory (--peer-dir)")
            self.peers = PeerBus(opts.peer_dir, opts.worker_id, opts.worker_count)
            self.ctx.services[PEER_BUS_KEY] = self.peers
            self.inflight_sharing = InflightSharing(self.peers, self.datastore, tracker=self.tracker)
        self.metrics = EPPMetrics(datastore=self.datastore)
        if self.peers is not None:
            self.metrics.registry.register(PeerBusCollector(self.peers))
        # Plugins that export metrics of their own (KV events, P/D) register them here.
        self.ctx.services["metrics.registry"] = self.metrics.registry
        register_pd_metrics(self.metrics.registry, self.ctx.services)
        self.admission = AdmissionController(None, opts.admission)
        self.observer = MetricsObserver(self.metrics, UsageMetrics(self.metrics.registry))
        self.sched_config: SchedulerConfig = load_scheduler_config(opts.config, self.ctx, self.observer)
        self.handler = ExtProcHandler(self.datastore, self._scheduler, AdmissionAdapter(self.admission),
                                      self.observer, opts.handler, self.tracker)
        self.flow_metrics = FlowControlMetrics(self.metrics.registry)
        self.flow: FlowController | None = None
        self.auth: ApiKeyAuth | None = None
        self.limiter: TenantLimiter | None = None
        self.tenant_metrics: TenantMetrics | None = None
        if opts.api_keys is not None:
            try:
                self.auth = ApiKeyAuth(opts.api_keys)
            except KeysFileError as e:
                raise ConfigError(str(e)) from None
            store: LimitStore = (RedisLimitStore(opts.rate_limit_redis) if opts.rate_limit_redis
                                 else MemoryLimitStore())
            self.limiter = TenantLimiter(store)
            self.tenant_metrics = TenantMetrics(self.metrics.registry)
        self.handler.auth = self.auth
        self.tracer_provider = setup_tracing(opts.tracing, opts.span_exporters)
        if self.tracer_provider is not None:
            self.handler.tracing = RequestTracing(self.tracer_provider)
        self.observer.trust_tenant = self.auth is not None
        self.admin_state: Any = None
        self.admin_server: Any = None
        if opts.admin.enabled or opts.explain_header:
            self._setup_admin()
        self.handler.cache = _response_cache(opts, self.metrics)
        self._apply_flow_control(self.sched_config)
        self.rollouts = Rollouts(self.datastore.model_rewrites, self._rollout_policy(self.sched_config),
                                 self.metrics.registry)
        self.handler.rollout = self.rollouts
        self.probe = ReadinessProbe(self.datastore)
        self._stop = asyncio.Event()
        self._health: GrpcHealthReporter | None = None
        self._sources: list[Any] = []
        self.cert_reloader: CertReloader | None = None

    def _scheduler(self) -> Any:
        return self.sched_config.scheduler

    def _setup_admin(self) -> None:
        """The admin API's view of this process: decision counters beside the metrics, and
        the explainer hook the handler consults before each decision (imported only here:
        without the admin API the protobuf stubs are never needed)."""
        from epp.admin.feed import DecisionExplainer
        from epp.admin.service import AdminState
        from epp.admin.stats import DecisionStatsCollector, TeeObserver

        opts = self.opts
        stats = DecisionStatsCollector()
        self.handler.observer = TeeObserver(self.observer, stats)
        explainer = DecisionExplainer(header_enabled=opts.explain_header, datastore=self.datastore,
                                      max_fallbacks=opts.handler.max_fallbacks)
        self.handler.explainer = explainer
        self.admin_state = AdminState(self.datastore, self._scheduler, self.handler.decisions, explainer,
                                      stats, self.ctx.services, opts.handler.max_fallbacks,
                                      str(opts.config or ""))

    def _apply_flow_control(self, sched: SchedulerConfig) -> None:
        """Saturation detector and flow control from the config's saturationDetector /
        featureGates / flowControl sections (raises ConfigError naming file and field)."""
        cfg = build_flow_control_config(sched.extra_sections, sched.plugins, self.ctx, sched.source,
                                        default_detector=self.opts.saturation.detector)
        if cfg.enabled:
            # GIE: with flow control on, saturation queues requests instead of shedding them.
            self.admission.saturation = None
            if self.flow is None:
                self.flow = FlowController(cfg, self.datastore.healthy_endpoints, self.flow_metrics)
            else:
                self.flow.reconfigure(cfg)
        else:
            self.admission.saturation = PoolSaturation(self.datastore, cfg.detector)
            if self.flow is not None:
                self.flow.release_all()
                self.flow = None
        gate = None
        if self.flow is not None or self.auth is not None:
            gate = AdmissionPipeline(self.flow, self.auth, self.limiter, self.tenant_metrics)
        self.handler.flow = gate

    @staticmethod
    def _rollout_policy(sched: SchedulerConfig) -> RolloutPolicy:
        return parse_rollout_policy(sched.extra_sections.get(ROLLOUTS_SECTION), sched.source)

    async def reload_config(self, path: str | None = None) -> bool:
        """Rebuild the scheduler from the config file; keeps the old one on error."""
        source = path or (str(self.opts.config) if self.opts.config else None)
        try:
            new = reload_scheduler_config(source, self.ctx, self.sched_config)
            policy = self._rollout_policy(new)
            self._apply_flow_control(new)
        except ConfigError as e:
            log.error("config reload failed, keeping the running config: %s", e)
            return False
        self.sched_config = new
        self.rollouts.set_policy(policy)
        await _start_plugin_services(self.ctx)
        log.info("scheduler config reloaded from %s", source or "the embedded default")
        return True

    async def run(self) -> None:
        """Start everything, serve until stop() or SIGTERM/SIGINT, then drain and stop in
        reverse order (also when start-up fails half way, so nothing is left running)."""
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(_stop_plugin_services, self.ctx)
            await self._start(stack)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self._stop.set)
            await self._stop.wait()
            log.info("shutting down: draining for up to %.1fs", self.opts.shutdown_grace_s)
            self.probe.draining = True
            if self._health is not None and self.opts.shutdown_delay_s > 0:
                await self._health.update()  # readiness NOT_SERVING now: gateways move new streams away
                await asyncio.sleep(self.opts.shutdown_delay_s)

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        opts = self.opts
        if opts.kubernetes is not None:
            from epp.k8s.source import KubernetesSource

            k8s = KubernetesSource(opts.kubernetes, self.datastore, self.reload_config,
                                   config_path=str(opts.config) if opts.config else None)
            stack.push_async_callback(k8s.stop)
            await k8s.start()
            self.probe.source_synced = k8s.synced
        elif opts.pool_file is not None and opts.endpoints_file is not None:
            local = LocalEndpointSource(self.datastore, opts.pool_file, opts.endpoints_file,
                                        opts.objectives_files)
            stack.push_async_callback(local.stop)
            await local.start()
            if opts.config is not None:
                watcher = ConfigFileWatcher(str(opts.config), self.reload_config, opts.config_watch_interval_s)
                stack.push_async_callback(watcher.stop)
                watcher.start()
        else:
            raise ConfigError("no endpoint source: give --pool-file and --endpoints-file (local mode) "
                              "or --pool-name (Kubernetes mode)")

        if self.peers is not None and self.inflight_sharing is not None:
            stack.push_async_callback(self.peers.stop)
            await self.peers.start()
            stack.push_async_callback(self.inflight_sharing.stop)
            await self.inflight_sharing.start()

        if self.datastore.pool is not None:
            self.flow_metrics.set_pool(self.datastore.pool.name)
            if self.handler.tracing is not None:
                self.handler.tracing.pool = self.datastore.pool.name
        if self.tracer_provider is not None:
            stack.callback(self.tracer_provider.shutdown)  # flushes the batched spans
        if self.auth is not None:
            stack.push_async_callback(self.auth.stop)
            await self.auth.start()
        if self.limiter is not None:
            stack.push_async_callback(self.limiter.store.close)
        if self.handler.cache is not None:
            stack.push_async_callback(self.handler.cache.close)
        stack.push_async_callback(self.tracker.stop)
        await self.tracker.start()
        scrapers = ScraperManager(self.datastore, opts.scrape)
        stack.push_async_callback(scrapers.stop)
        await scrapers.start()
        await _start_plugin_services(self.ctx)
        if opts.record is not None:
            recorder = TraceRecorder(opts.record, self.handler.decisions, self.datastore,
                                     lambda: config_text(self.opts.config), opts.worker_id)
            stack.push_async_callback(recorder.stop)
            await recorder.start()

        health = self._health = GrpcHealthReporter(self.probe)
        native_transport = opts.grpc_transport == "native"
        credentials = None
        ssl_context: ReloadingSSLContext | None = None
        if opts.tls.enabled and native_transport:
            ssl_context, self.cert_reloader = server_ssl_context(opts.tls)
        elif opts.tls.enabled:
            credentials, self.cert_reloader = server_credentials(opts.tls)
        if native_transport:
            native = H2GrpcServer(opts.host, opts.grpc_port, max_concurrent_streams=opts.max_concurrent_streams,
                                  reuse_port=opts.worker_count > 1,
                                  ssl=ssl_context.base if ssl_context is not None else None)
            native.add_stream_method(f"/{EXT_PROC_SERVICE}/Process", self.handler.process,
                                     ext_proc_pb2.ProcessingRequest.FromString)
            native.add_unary_method("/grpc.health.v1.Health/Check", health.check)
            native.add_stream_method("/grpc.health.v1.Health/Watch", health.watch, bytes)
            stack.push_async_callback(native.stop, opts.shutdown_grace_s)
            await native.start()
            port = native.port
        else:
            grpc_server, port = build_grpc_server(
                self.handler, f"{opts.host}:{opts.grpc_port}", max_concurrent_streams=opts.max_concurrent_streams,
                # Only workers of one EPP share the port; a lone EPP must fail if it is taken.
                reuse_port=opts.worker_count > 1, credentials=credentials)
            health.add_to_server(grpc_server)
            stack.push_async_callback(grpc_server.stop, opts.shutdown_grace_s)
            await grpc_server.start()
        stack.push_async_callback(health.stop)  # runs first: NOT_SERVING before the drain
        await health.start()
        if opts.grpc_health_port and opts.worker_id == 0:
            probe_server = grpc.aio.server()
            health.add_to_server(probe_server)
            try:
                bound = probe_server.add_insecure_port(f"{opts.host}:{opts.grpc_health_port}")
            except RuntimeError:
                bound = 0
            if bound == 0:
                raise OSError(f"cannot listen on {opts.host}:{opts.grpc_health_port} for gRPC health")
            stack.push_async_callback(probe_server.stop, 0)
            await probe_server.start()
        # Worker 0 answers the probes and serves /metrics for every worker (see WorkerMetrics);
        # the others export theirs on a private loopback port.
        http_servers: list[HttpServer] = []
        if opts.worker_id == 0:
            app = metrics_app(self.metrics.registry)
            if self.peers is not None:
                app = worker_metrics_app(WorkerMetrics(self.peers, self.metrics.registry))
            http_servers += [HttpServer(app, opts.host, opts.metrics_port),
                             HttpServer(health_app(self.probe), opts.host, opts.health_port)]
        else:
            http_servers.append(HttpServer(metrics_app(self.metrics.registry), "127.0.0.1", 0))
        for http in http_servers:
            stack.push_async_callback(http.stop)
            await http.start()
        if opts.admin.enabled and opts.worker_id == 0 and self.admin_state is not None:
            from epp.admin.server import AdminServer

            self.admin_server = AdminServer(opts.admin, self.admin_state)
            stack.push_async_callback(self.admin_server.stop)
            await self.admin_server.start()
        if opts.worker_id != 0 and self.peers is not None:
            announcer = asyncio.create_task(
                WorkerMetrics(self.peers, self.metrics.registry).announce(http_servers[0].port))
            stack.callback(announcer.cancel)
        log.info("EPP worker %d/%d serving ext_proc (%s) on %s:%d, health on :%d, metrics on :%d",
                 opts.worker_id, opts.worker_count, "TLS" if opts.tls.enabled else "plaintext",
                 opts.host, port, opts.health_port, opts.metrics_port)

    def stop(self) -> None:
        self._stop.set()


def worker_metrics_app(metrics: WorkerMetrics) -> web.Application:
    async def handle(_: web.Request) -> web.Response:
        resp = web.Response(body=await metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app


def _response_cache(opts: ServeOptions, metrics: EPPMetrics) -> ResponseCache | None:
    """The exact-response cache (docs/response-cache.md), or None when not configured."""
    if opts.response_cache is None:
        if opts.response_cache_redis:
            raise ConfigError("--response-cache-redis needs --response-cache FILE (the cache rules)")
        return None
    try:
        cfg = load_cache_config(opts.response_cache, opts.response_cache_redis)
    except CacheConfigError as e:
        raise ConfigError(str(e)) from None
    log.info("response cache on: %d rule(s), storage %s", len(cfg.rules),
             "redis" if cfg.storage.redis else "memory")
    return ResponseCache(cfg, metrics=CacheMetrics(metrics.registry))


async def _start_plugin_services(ctx: PluginContext) -> None:
    from epp import prefixcache

    await prefixcache.start_services(ctx.services)


async def _stop_plugin_services(ctx: PluginContext) -> None:
    from epp import prefixcache

    await prefixcache.stop_services(ctx.services)
