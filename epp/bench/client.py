"""Open-loop streaming load client: sends a workload through a router, measures every request.

Requests leave at their scheduled offsets whatever happened to earlier ones (open loop, so a
slow router builds queues instead of slowing the client down). Each request streams
(`stream: true` with usage) and records time to first token, the gaps between tokens and the
end-to-end latency in wall seconds; the runner converts to model seconds. The phase is
bounded twice: by the workload's request count and by a wall-clock deadline after which
unfinished requests are cancelled and counted as errors ("deadline").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import httpx
import msgspec

from epp.bench.workloads import BenchRequest, Workload

POD_HEADER = "x-sim-pod"  # set by the simulator on every response


@dataclass(slots=True)
class RequestResult:
    index: int
    status: int = 0
    error: str = ""
    sent: bool = False
    sent_at: float = 0.0  # wall seconds since the phase start
    ttft_s: float = float("nan")
    e2e_s: float = float("nan")
    token_gaps_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    pod: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.status == 200 and self.e2e_s == self.e2e_s  # e2e not NaN


@dataclass(slots=True)
class PhaseResult:
    results: list[RequestResult]
    wall_s: float  # first send to last completion


class _Chunk(msgspec.Struct):
    choices: list[dict[str, object]] = []
    usage: dict[str, object] | None = None


_decoder = msgspec.json.Decoder(_Chunk)


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0


def request_body(req: BenchRequest) -> dict[str, object]:
    return {
        "model": req.model,
        "messages": req.messages,
        "max_tokens": req.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _one(client: httpx.AsyncClient, url: str, req: BenchRequest, result: RequestResult,
               t0: float) -> None:
    start = time.monotonic()
    result.sent = True
    result.sent_at = start - t0
    last = start
    try:
        async with client.stream("POST", url, json=request_body(req), headers=req.headers or None) as resp:
            result.status = resp.status_code
            result.pod = resp.headers.get(POD_HEADER, "")
            if resp.status_code != 200:
                body = await resp.aread()
                result.error = f"HTTP {resp.status_code}: {body[:200].decode(errors='replace')}"
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    break
                chunk = _decoder.decode(payload)
                if chunk.usage:
                    result.prompt_tokens = _count(chunk.usage.get("prompt_tokens"))
                    details = chunk.usage.get("prompt_tokens_details")
                    if isinstance(details, dict):
                        result.cached_tokens = _count(details.get("cached_tokens"))
                for choice in chunk.choices:
                    delta = choice.get("delta")
                    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                    if not text:
                        continue
                    now = time.monotonic()
                    if result.output_tokens == 0:
                        result.ttft_s = now - start
                    else:
                        result.token_gaps_s.append(now - last)
                    last = now
                    result.output_tokens += 1
        result.e2e_s = time.monotonic() - start
    except (httpx.HTTPError, msgspec.DecodeError, OSError) as e:
        result.error = f"{type(e).__name__}: {e}"[:300]


async def run_phase(base_url: str, workload: Workload, time_scale: float, deadline_s: float,
                    max_connections: int = 1024) -> PhaseResult:
    """Send `workload` to `base_url`; every arrival offset is multiplied by `time_scale`."""
    url = base_url.rstrip("/") + "/v1/chat/completions"
    results = [RequestResult(r.index) for r in workload.requests]
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    timeout = httpx.Timeout(connect=10.0, read=deadline_s, write=10.0, pool=deadline_s)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        t0 = time.monotonic()
        deadline = t0 + deadline_s
        tasks: list[asyncio.Task[None]] = []
        for req, result in zip(workload.requests, results, strict=True):
            delay = t0 + req.arrival_s * time_scale - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() >= deadline:
                break
            tasks.append(asyncio.create_task(_one(client, url, req, result, t0)))
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for result in results:
            if not result.ok and not result.error:
                result.error = "deadline"
        finished = [r.sent_at + r.e2e_s for r in results if r.ok]
        wall = max(finished) if finished else time.monotonic() - t0
    return PhaseResult(results, wall)
