"""HTTP exposition of the metrics registry (aiohttp) and a small server wrapper.

`/metrics` defaults to :9090 like GIE's EPP. Each EPP worker process has its own registry;
with several SO_REUSEPORT workers give each its own metrics port (or scrape one) since
prometheus_client's multiprocess mode does not cover custom collectors.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from epp.observability.health import DEFAULT_HEALTH_PORT, ReadinessProbe, add_health_routes, health_app

DEFAULT_METRICS_PORT = 9090


def add_metrics_route(app: web.Application, registry: CollectorRegistry, path: str = "/metrics") -> None:
    async def metrics(_: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app.router.add_get(path, metrics)


def metrics_app(registry: CollectorRegistry, path: str = "/metrics") -> web.Application:
    app = web.Application()
    add_metrics_route(app, registry, path)
    return app


class HttpServer:
    """An aiohttp app on host:port with async start()/stop(); port 0 picks a free port."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            where = f"{self.host}:{self._requested_port}"
            raise OSError(e.errno, f"cannot listen on {where}: {e.strerror}") from e
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class ObservabilityServers:
    """/metrics (default :9090) and /healthz + /readyz (default :9003) as one unit.

    Equal ports serve both on one listener. Port 0 picks free ports (tests). The default
    host is loopback; in a cluster pass host="0.0.0.0" so the kubelet and Prometheus
    can reach the pod.
    """

    def __init__(self, registry: CollectorRegistry, probe: ReadinessProbe, host: str = "127.0.0.1",
                 metrics_port: int = DEFAULT_METRICS_PORT, health_port: int = DEFAULT_HEALTH_PORT) -> None:
        if metrics_port == health_port and metrics_port != 0:
            app = web.Application()
            add_metrics_route(app, registry)
            add_health_routes(app, probe)
            self.servers = [HttpServer(app, host, metrics_port)]
            self.metrics = self.health = self.servers[0]
        else:
            self.metrics = HttpServer(metrics_app(registry), host, metrics_port)
            self.health = HttpServer(health_app(probe), host, health_port)
            self.servers = [self.metrics, self.health]

    async def start(self) -> None:
        started: list[HttpServer] = []
        try:
            for server in self.servers:
                await server.start()
                started.append(server)
        except OSError:
            for server in started:
                await server.stop()
            raise

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()
