"""`epp bbr`: the body-based router, a small ext_proc server in front of the pools' EPPs.

    python -m epp bbr --config bbr.yaml --grpc-port 9004 --health-port 9005

Readiness (`GET /readyz` on the health port) turns 200 once every pool's models are known;
its JSON lists model -> pool. `GET /metrics` there: bbr_requests_total{outcome}, bbr_models{pool}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2

from epp.bbr.catalog import ModelCatalog
from epp.bbr.config import BbrConfigError, load_config
from epp.bbr.handler import BbrHandler
from epp.bbr.metrics import BbrMetrics
from epp.server.grpc_server import EXT_PROC_SERVICE
from epp.server.h2grpc import H2GrpcServer

log = logging.getLogger("epp.bbr")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "bbr", help="body-based router: model -> X-Gateway-Model-Name, aggregated /v1/models",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="pools and where their models come from")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--grpc-port", type=int, default=9004, help="ext_proc (9004)")
    p.add_argument("--health-port", type=int, default=9005, help="/healthz and /readyz (9005)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=run)


async def serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except BbrConfigError as e:
        log.error("invalid BBR configuration: %s", e)
        return 2
    catalog = ModelCatalog(config)
    metrics = BbrMetrics(catalog)
    handler = BbrHandler(catalog, metrics=metrics)
    # The EPP's own HTTP/2 server (epp/server/h2grpc.py), as for `epp serve`: BBR sits on every
    # request's path too.
    server = H2GrpcServer(args.host, args.grpc_port)
    server.add_stream_method(f"/{EXT_PROC_SERVICE}/Process", handler.process,
                             ext_proc_pb2.ProcessingRequest.FromString)
    try:
        await server.start()
    except OSError as e:
        log.error("%s", e)
        return 1

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(_: web.Request) -> web.Response:
        ready = catalog.complete()
        return web.json_response({"ready": ready, "missing_pools": catalog.missing_pools(),
                                  "models": catalog.models()}, status=200 if ready else 503)

    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", prometheus)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.health_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with httpx.AsyncClient() as client:
        discovery = asyncio.create_task(catalog.run(client), name="bbr-model-discovery")
        log.info("bbr: ext_proc on %s:%d, health on :%d", args.host, args.grpc_port, args.health_port)
        await stop.wait()
        discovery.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await discovery
    await server.stop(1.0)
    await runner.cleanup()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(args))
