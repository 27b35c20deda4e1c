"""Small vLLM stand-ins speaking the NixlConnector P/D protocol over real HTTP on loopback.

A prefill engine answers a `kv_transfer_params.do_remote_decode` request with one token and
the KV-transfer parameters vLLM returns; a decode engine records what it received and
answers (JSON, or SSE when `stream` is true). Used until epp.sim grows --role support.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PREFILL_KV_PARAMS = {
    "do_remote_prefill": True,
    "do_remote_decode": False,
    "remote_engine_id": "engine-prefill-0",
    "remote_block_ids": [0, 1, 2],
    "remote_host": "127.0.0.1",
    "remote_port": 5600,
    "tp_size": 1,
}


@dataclass
class StubEngine:
    role: str  # "prefill" | "decode"
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    # Test knobs.
    fail_status: int | None = None
    omit_kv_params: bool = False
    hang: bool = False
    # SSE: the engine sends the first event, then waits for this before the rest.
    release_stream: asyncio.Event = field(default_factory=asyncio.Event)
    unhang: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(body)
        self.headers.append(dict(request.headers))
        if self.hang:
            await self.unhang.wait()
        if self.fail_status is not None:
            return web.json_response({"error": {"message": "engine failure"}}, status=self.fail_status)
        answer: dict[str, Any] = {
            "id": f"cmpl-{self.role}",
            "object": "text_completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "text": f"from-{self.role}", "finish_reason": "length"}],
        }
        if self.role == "prefill":
            if not self.omit_kv_params:
                answer["kv_transfer_params"] = PREFILL_KV_PARAMS
            return web.json_response(answer)
        if not body.get("stream"):
            return web.json_response(answer, headers={"x-engine": self.role})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-engine": self.role})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"text":"first"}]}\n\n')
        try:
            await self.release_stream.wait()
        except asyncio.CancelledError:
            self.cancelled.set()  # the client side of this connection went away
            raise
        for i in range(3):
            await resp.write(f'data: {json.dumps({"choices": [{"text": f"t{i}"}]})}\n\n'.encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stub-model", "object": "model"}]})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text="# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 2.0\n",
                            content_type="text/plain")


@asynccontextmanager
async def serving(app: web.Application | web.AppRunner, port: int = 0) -> AsyncIterator[int]:
    """Serve `app` on 127.0.0.1 (a free port when 0); yields the port."""
    # A short shutdown grace: a stub handler left waiting must not stall the test. Handlers
    # are cancelled when their client disconnects, as in vLLM.
    runner = app if isinstance(app, web.AppRunner) else web.AppRunner(
        app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    try:
        yield int(bound)
    finally:
        await runner.cleanup()
