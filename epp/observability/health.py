"""Liveness and readiness over HTTP (:9003 by default).

- `/healthz`: the process answers, so it is alive.
- `/readyz`: ready when the pool is synced and at least `min_healthy_endpoints` endpoints
  are healthy (ready and freshly scraped), and the process is not draining. Otherwise 503
  with a JSON body listing the reasons, so `curl` explains an unready EPP.

The gRPC health service (what Envoy and Kubernetes gRPC probes ask) is in grpc_health.py
and reports the same ReadinessProbe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from epp.datastore.datastore import Datastore

DEFAULT_HEALTH_PORT = 9003


@dataclass(slots=True)
class Readiness:
    ready: bool
    reasons: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "reasons": self.reasons, **self.details}


class ReadinessProbe:
    def __init__(self, datastore: Datastore, min_healthy_endpoints: int = 1,
                 source_synced: Callable[[], bool] | None = None) -> None:
        self.datastore = datastore
        self.min_healthy_endpoints = min_healthy_endpoints
        # The endpoint source's own view (e.g. Kubernetes: pods and objectives listed).
        self.source_synced = source_synced
        # Set during graceful shutdown so load balancers stop sending new streams first.
        self.draining = False

    def check(self) -> Readiness:
        ds = self.datastore
        reasons: list[str] = []
        pool = ds.pool
        total = len(ds.endpoints())
        healthy = len(ds.healthy_endpoints())
        if self.draining:
            reasons.append("shutting down (draining)")
        if not ds.pool_synced():
            reasons.append("InferencePool not synced yet")
        elif self.source_synced is not None and not self.source_synced():
            reasons.append("pods and objectives not listed yet")
        if healthy < self.min_healthy_endpoints:
            if total == 0:
                reasons.append("no endpoints match the pool selector")
            else:
                reasons.append(f"{healthy} of {total} endpoints healthy, need {self.min_healthy_endpoints} "
                               "(unhealthy = not ready or metrics stale)")
        details: dict[str, Any] = {
            "pool": f"{pool.namespace}/{pool.name}" if pool is not None else None,
            "endpoints": total,
            "healthy_endpoints": healthy,
        }
        return Readiness(ready=not reasons, reasons=reasons, details=details)


def add_health_routes(app: web.Application, probe: ReadinessProbe) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        result = probe.check()
        return web.json_response(result.as_json(), status=200 if result.ready else 503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def health_app(probe: ReadinessProbe) -> web.Application:
    app = web.Application()
    add_health_routes(app, probe)
    return app
