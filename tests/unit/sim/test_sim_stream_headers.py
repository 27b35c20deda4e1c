"""A stream's headers leave the simulator when they leave vLLM's server: before the prefill.

The reference is the stack vLLM's OpenAI server runs on, not our reading of it: the endpoint
returns Starlette's StreamingResponse over an async generator that yields its first chunk once
the engine has the first token, and uvicorn serves it. The EPP times a streamed response's
first token by its first body chunk for this reason (epp/server/extproc.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from epp.sim.cluster import simulated_pods
from tests.unit.sim.test_sim_engine import LONG_PROMPT

PREFILL_S = 0.4


async def _vllm_shaped(request: Request) -> StreamingResponse:
    async def generator() -> AsyncIterator[str]:
        await asyncio.sleep(PREFILL_S)  # the engine's prefill, before the first output
        yield 'data: {"choices":[{"text":"a"}]}\n\n'
        yield "data: [DONE]\n\n"

    # As vLLM's create_completion returns a stream.
    return StreamingResponse(content=generator(), media_type="text/event-stream")


async def _times(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> tuple[float, float]:
    """Seconds to the response headers and to the first body chunk."""
    start = time.perf_counter()
    async with client.stream("POST", url, json=body) as r:
        headers = time.perf_counter() - start
        assert r.status_code == 200
        async for chunk in r.aiter_bytes():
            if chunk:
                return headers, time.perf_counter() - start
    raise AssertionError("no body")


async def test_stream_headers_come_before_the_first_token_as_from_vllms_server() -> None:
    app = Starlette(routes=[Route("/v1/completions", _vllm_shaped, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with simulated_pods(1) as cluster, httpx.AsyncClient(timeout=30, trust_env=False) as client:
            ref_headers, ref_first = await _times(client, f"http://127.0.0.1:{port}/v1/completions", {})
            sim_headers, sim_first = await _times(
                client, cluster.urls[0] + "/v1/completions",
                {"prompt": LONG_PROMPT, "max_tokens": 2, "stream": True})
    finally:
        server.should_exit = True
        await serving
    # The reference: headers at once, the first chunk after the prefill.
    assert ref_first >= PREFILL_S and ref_headers < PREFILL_S / 4, (ref_headers, ref_first)
    # The simulator: the same order, its prefill of ~3.7k tokens (~0.2 s) after the headers.
    assert sim_first > 0.15 and sim_headers < sim_first / 4, (sim_headers, sim_first)
