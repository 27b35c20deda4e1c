"""Liveness and readiness over HTTP (:9003 by default).

- `/healthz`: the process answers, so it is alive.
- `/readyz`: the EPP can answer: its pool is synced (and, in Kubernetes mode, its pods and
  objectives listed) and it is not draining. Otherwise 503 with a JSON body listing the
  reasons, so `curl` explains an unready EPP.

Readiness deliberately does not depend on the pods' metrics, as in the reference EPP (its
gRPC health "readiness" service checks pool sync, leadership in its active-passive mode, and
draining). Stale scrapes under load would otherwise take every EPP replica out of its
Service at once, which with FailClose is a full outage; an EPP with no healthy pod still
answers (503 `no_healthy_endpoint`, in the OpenAI error shape). Pod freshness is the
scheduler's business (Datastore.healthy_endpoints) and is exported as metrics
(inference_pool_ready_pods); the JSON body reports it too, under `healthy_endpoints`.

The gRPC health service (grpc_health.py) reports the same ReadinessProbe.
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
    def __init__(self, datastore: Datastore, source_synced: Callable[[], bool] | None = None) -> None:
        self.datastore = datastore
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
        details: dict[str, Any] = {
            "pool": f"{pool.namespace}/{pool.name}" if pool is not None else None,
            "endpoints": total,
            "healthy_endpoints": healthy,
        }
        # Informational only (see the module doc): why requests may get 503 right now.
        if total == 0:
            details["warning"] = "no endpoints match the pool selector"
        elif healthy == 0:
            details["warning"] = f"0 of {total} endpoints healthy (not ready or metrics stale)"
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
