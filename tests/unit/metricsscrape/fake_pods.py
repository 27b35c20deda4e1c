"""A loopback stand-in for a model server's /metrics and /v1/models (aiohttp)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from tests.unit.metricsscrape.vllm_pages import vllm_page


@dataclass
class FakePod:
    """A loopback HTTP server answering /metrics and /v1/models; `mode` steers failures."""

    port: int = 0
    runner: web.AppRunner | None = None
    mode: str = "ok"  # ok | error | hang
    waiting: int = 1
    page: Callable[[int], str] = lambda waiting: vllm_page(waiting=waiting)
    models: tuple[str, ...] = ("base-model", "sql-lora")
    hits: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def metrics(self, _: web.Request) -> web.Response:
        self.hits += 1
        if self.mode == "error":
            return web.Response(status=500, text="boom")
        if self.mode == "hang":
            await self.released.wait()
        return web.Response(text=self.page(self.waiting), content_type="text/plain")

    async def v1_models(self, _: web.Request) -> web.Response:
        data = [{"id": m, "object": "model"} for m in self.models]
        return web.json_response({"object": "list", "data": data})


async def start_pod() -> FakePod:
    pod = FakePod()
    app = web.Application()
    app.router.add_get("/metrics", pod.metrics)
    app.router.add_get("/v1/models", pod.v1_models)
    pod.runner = web.AppRunner(app, access_log=None)
    await pod.runner.setup()
    site = web.TCPSite(pod.runner, "127.0.0.1", 0)
    await site.start()
    pod.port = pod.runner.addresses[0][1]
    return pod
