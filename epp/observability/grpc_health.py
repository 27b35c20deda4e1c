"""grpc.health.v1 for the ext_proc server, driven by the ReadinessProbe.

Uses the gRPC project's own `grpcio-health-checking` package (grpc_health.v1) rather than
protos compiled here. Service names follow the reference EPP (llm-d-router
cmd/epp/runner/health.go): "", "readiness" and the ext_proc service name report readiness;
"liveness" is SERVING while the process runs (also while draining, so a draining EPP is not
restarted); every name turns NOT_SERVING at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from epp.aio import cancel_and_wait
from epp.observability.health import ReadinessProbe
from epp.server.h2grpc import GrpcError

log = logging.getLogger(__name__)

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
LIVENESS_SERVICE = "liveness"
READINESS_SERVICE = "readiness"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
WATCH_POLL_S = 0.1  # how soon a Watch stream on epp/server/h2grpc.py sees a change


class GrpcHealthReporter:
    """Owns a grpc.aio HealthServicer and keeps it in line with the probe.

    `add_to_server(server)` before the server starts; `await start()` polls the probe
    every `interval` seconds (status changes also apply at once via `await update()`);
    `await stop()` flips everything to NOT_SERVING for graceful shutdown.
    """

    def __init__(self, probe: ReadinessProbe,
                 services: tuple[str, ...] = ("", READINESS_SERVICE, EXT_PROC_SERVICE),
                 interval: float = 0.5) -> None:
        self.probe = probe
        self.services = services
        self.interval = interval
        self.servicer = health.aio.HealthServicer()
        self.serving: bool | None = None
        # What the servicer reports, kept here too for servers that are not grpcio's
        # (epp/server/h2grpc.py answers Check from it).
        self.statuses: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def add_to_server(self, server: Any) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def update(self) -> bool:
        ready = self.probe.check().ready
        if ready != self.serving:
            status = SERVING if ready else NOT_SERVING
            for service in self.services:
                await self._set(service, status)
            log.info("grpc health: %s", "SERVING" if ready else "NOT_SERVING")
            self.serving = ready
        return ready

    async def _set(self, service: str, status: int) -> None:
        self.statuses[service] = status
        await self.servicer.set(service, status)

    async def check(self, raw: bytes) -> bytes:
        """grpc.health.v1.Health/Check on a raw request, for epp/server/h2grpc.py."""
        service = health_pb2.HealthCheckRequest.FromString(raw).service
        status = self.statuses.get(service)
        if status is None:
            raise GrpcError(5, "unknown service")  # NOT_FOUND, as grpcio's HealthServicer
        return health_pb2.HealthCheckResponse(status=status).SerializeToString()  # type: ignore[no-any-return]

    async def watch(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[bytes]:
        """grpc.health.v1.Health/Watch for epp/server/h2grpc.py: the status now, then each
        change (SERVICE_UNKNOWN for a name not served, as grpcio's servicer answers)."""
        service = ""
        async for raw in requests:
            service = health_pb2.HealthCheckRequest.FromString(raw).service
            break
        last = None
        while True:
            status = self.statuses.get(service, SERVICE_UNKNOWN)
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status).SerializeToString()
            await asyncio.sleep(WATCH_POLL_S)

    async def start(self) -> None:
        await self._set(LIVENESS_SERVICE, SERVING)
        await self.update()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="grpc-health")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.update()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self.servicer.enter_graceful_shutdown()
        self.statuses = dict.fromkeys(self.statuses, NOT_SERVING)
        self.serving = False
