"""Bounded streaming load for the chaos suite: every request is classified by how it ended.

A request *started* once a pod answered it: response headers 200. vLLM sends a stream's
headers when it accepts the request, before the prefill (a Starlette StreamingResponse under
uvicorn; the simulator does the same), and from then on Envoy cannot retry it elsewhere.
Outcomes:
- ok: the stream ended with `data: [DONE]`;
- failed_not_started: an error status, a refused/reset connection or a timeout before a pod
  answered. These are the requests a fault must never lose;
- cut_in_flight: a pod had answered and the stream broke before `[DONE]` (unavoidable when
  the pod serving it dies; counted and reported). `RequestRecord.tokens` says whether any
  token had reached the client: a request cut while it waited for its first token is lost
  with the pod as much as one cut while decoding.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Literal

import httpx

Outcome = Literal["ok", "failed_not_started", "cut_in_flight"]


@dataclass(slots=True)
class RequestRecord:
    started_at: float  # monotonic, when the request was sent
    ended_at: float
    outcome: Outcome
    status: int = 0
    detail: str = ""
    pod: str = ""
    tokens: bool = False  # a streamed chunk had reached the client


@dataclass(slots=True)
class LoadParams:
    url: str  # Envoy's listener, e.g. http://127.0.0.1:8081
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    concurrency: int = 8
    max_tokens: int = 40
    duration_s: float = 6.0  # stop sending new requests after this long
    max_requests: int = 2000
    request_timeout_s: float = 20.0
    retry_pause_s: float = 0.1  # pause after a failed request


@dataclass(slots=True)
class LoadResult:
    records: list[RequestRecord] = field(default_factory=list)

    def count(self, outcome: Outcome, after: float = 0.0) -> int:
        return sum(1 for r in self.records if r.outcome == outcome and r.started_at >= after)

    def failures(self, outcome: Outcome) -> list[RequestRecord]:
        return [r for r in self.records if r.outcome == outcome]


class StreamingLoad:
    """`concurrency` clients sending streaming completions until the time or count bound."""

    def __init__(self, params: LoadParams) -> None:
        self.params = params
        self.result = LoadResult()
        self._stop = asyncio.Event()
        self._sent = 0

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> LoadResult:
        p = self.params
        limits = httpx.Limits(max_connections=p.concurrency * 2, max_keepalive_connections=p.concurrency)
        timeout = httpx.Timeout(p.request_timeout_s, connect=5.0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            deadline = time.monotonic() + p.duration_s
            await asyncio.gather(*(self._worker(client, deadline, i) for i in range(p.concurrency)))
        return self.result

    async def _worker(self, client: httpx.AsyncClient, deadline: float, worker: int) -> None:
        p = self.params
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline and self._sent < p.max_requests:
            self._sent += 1
            n += 1
            # Distinct prompts: the prefix scorer must not pin all load on one pod.
            body = {"model": p.model, "prompt": f"chaos worker {worker} request {n}: tell me a story",
                    "max_tokens": p.max_tokens, "stream": True,
                    "stream_options": {"include_usage": True}}  # the EPP's usage accounting reads it
            record = await self._one(client, body)
            self.result.records.append(record)
            if record.outcome != "ok":
                # A real client backs off a little before trying again; without this a worker
                # would spin on instant 503s and the counts would measure the loop speed.
                await asyncio.sleep(p.retry_pause_s)

    async def _one(self, client: httpx.AsyncClient, body: dict[str, object]) -> RequestRecord:
        t0 = time.monotonic()
        tokens = False
        status = 0
        pod = ""
        try:
            async with client.stream("POST", f"{self.params.url}/v1/completions", json=body) as r:
                status = r.status_code
                pod = r.headers.get("x-sim-pod", "")
                if status != 200:
                    await r.aread()
                    return RequestRecord(t0, time.monotonic(), "failed_not_started", status,
                                         r.text[:200], pod)
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    tokens = True
                    if line.strip() == "data: [DONE]":
                        return RequestRecord(t0, time.monotonic(), "ok", status, "", pod, tokens)
                return RequestRecord(t0, time.monotonic(), "cut_in_flight", status, "stream ended without [DONE]",
                                     pod, tokens)
        except (httpx.HTTPError, OSError) as e:
            outcome: Outcome = "cut_in_flight" if status == 200 else "failed_not_started"
            return RequestRecord(t0, time.monotonic(), outcome, status, f"{type(e).__name__}: {e}"[:200], pod,
                                 tokens)
