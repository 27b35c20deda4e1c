"""The EPP's own per-request CPU, in process: `python -m epp.bench.hotpath`.

Builds the real server object (`EPPServer`: default or given config, Prometheus observer,
admission, in-flight ledger) without opening any socket, fills its datastore with N pods,
and drives `ExtProcHandler.process` with the messages Envoy sends for one chat request
(request headers, buffered body, response headers), deserialised from wire bytes the way
grpcio does. It reports the process CPU time (`time.process_time`) per request over a fixed
number of requests, which, unlike wall-clock latency, is hardly moved by other processes
on a shared machine, and is what bounds decisions/s per core. gRPC itself (about 500 us of
a real request's CPU, docs/performance.md) is not in it: this is the part that is ours.

For noise-free comparisons run it under valgrind, which counts the instructions of the
measured requests only (deterministic: other processes on the machine do not change it):

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        --toggle-collect=functools_reduce .venv/bin/python -m epp.bench.hotpath --pods 64 \
        --requests 300 --warmup 200

"Collected" / requests is instructions per request. `--profile` prints the top functions
by own time (cProfile) instead. `--header x-llm-d-slo-ttft-ms=1500` (repeatable) gives every
request a header: with the latency profile, SLO headers take the filter's and the scorer's
paths for requests with targets.

Requests are released (the stream ends) `2 * pods` requests after they start, so the
ledger scorers read a pool with work in flight. Bounded in count; no network.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import io
import json
import pstats
import random
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.datastore.endpoint import Endpoint, EndpointMetrics
from epp.server.app import EPPServer, ServeOptions

# What Envoy 1.40 sends in request_headers for the overhead benchmark's POST (checked with its
# trace log), so header parsing costs what it costs in production.
_ENVOY_HEADERS = (
    (":authority", "127.0.0.1:18000"), (":path", "/v1/chat/completions"), (":method", "POST"),
    (":scheme", "http"), ("content-type", "application/json"), ("content-length", "2009"),
    ("x-forwarded-proto", "http"), ("x-request-id", "2f0c6d1e-9f3b-4c55-8a4e-0d6b1f0e7a21"),
)


@dataclass(slots=True)
class HotPathResult:
    pods: int
    requests: int
    cpu_us_per_request: float
    wall_us_per_request: float


def request_messages(body: bytes, request_id: str, extra_headers: Sequence[tuple[str, str]] = ()) -> list[bytes]:
    """Wire bytes of the three ProcessingRequests of one buffered request."""
    hm = base_pb2.HeaderMap()
    for key, value in (*_ENVOY_HEADERS, *extra_headers):
        if key == "x-request-id":
            value = request_id
        elif key == "content-length":
            value = str(len(body))
        hm.headers.add(key=key, raw_value=value.encode())
    headers = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hm, end_of_stream=False))
    body_msg = pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))
    rh = base_pb2.HeaderMap()
    rh.headers.add(key=":status", raw_value=b"200")
    response = pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=rh, end_of_stream=False))
    return [headers.SerializeToString(), body_msg.SerializeToString(), response.SerializeToString()]


def build_server(pods: int, config: Path | None, seed: int = 42) -> EPPServer:
    server = EPPServer(ServeOptions(config=config))
    rng = random.Random(seed)
    for i in range(pods):
        server.datastore.upsert_endpoint(Endpoint(
            name=f"pod-{i}", address="127.0.0.1", port=20000 + i,
            metrics=EndpointMetrics(waiting_queue_size=rng.randrange(0, 4), running_requests=rng.randrange(0, 16),
                                    kv_cache_usage=rng.random(), updated_at=time.monotonic())))
    return server


class _Stream:
    """One ext_proc stream fed message by message (as grpc.aio does), ended on demand."""

    def __init__(self, server: EPPServer, messages: Sequence[bytes]) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._gen = server.handler.process(self._requests(), None)
        self.messages = messages

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            raw = await self._queue.get()
            if raw is None:
                return
            yield pb.ProcessingRequest.FromString(raw)

    async def send(self, raw: bytes | None) -> list[bytes]:
        self._queue.put_nowait(raw)
        out: list[bytes] = []
        if raw is None:
            out.extend([x async for x in self._gen])
            return out
        # Headers and body are answered one message each; the response headers too.
        out.append(await self._gen.__anext__())
        return out


async def _drive(server: EPPServer, messages: Sequence[list[bytes]], keep_open: int, verify: bool = False) -> None:
    open_streams: deque[_Stream] = deque()
    for i, msgs in enumerate(messages):
        stream = _Stream(server, msgs)
        for k, raw in enumerate(msgs):
            answer = await stream.send(raw)
            if not answer or not answer[0]:
                raise RuntimeError(f"request {i}: no answer to message {k}")
            if verify and k == 1:  # the body's answer must route, not refuse
                routed = pb.ProcessingResponse.FromString(answer[0])
                if routed.WhichOneof("response") != "request_body" or not routed.HasField("dynamic_metadata"):
                    raise RuntimeError(f"request {i} was not routed: {routed}")
        open_streams.append(stream)
        if len(open_streams) > keep_open:
            await open_streams.popleft().send(None)
    while open_streams:
        await open_streams.popleft().send(None)


def run(pods: int, requests: int, warmup: int = 500, config: Path | None = None,
        profile: bool = False, headers: Sequence[tuple[str, str]] = ()) -> tuple[HotPathResult, str]:
    from epp.bench.overhead import chat_bodies

    server = build_server(pods, config)
    bodies = chat_bodies()
    keep_open = 2 * pods

    def messages(count: int, prefix: str) -> list[list[bytes]]:
        # Built before the clock starts: encoding them is Envoy's work, not the EPP's.
        return [request_messages(bodies[i % len(bodies)], f"{prefix}-{i}", headers) for i in range(count)]

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_drive(server, messages(max(1, warmup), "warmup"), keep_open, verify=True))
        measured = messages(requests, "req")
        prof = cProfile.Profile() if profile else None
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if prof is not None:
            prof.enable()
        # The measured requests run inside a call of the C function functools.reduce, so
        # `valgrind --tool=callgrind --toggle-collect=functools_reduce` counts the
        # instructions of exactly these requests (not start-up, imports or warm-up).
        functools.reduce(lambda _a, _b: (loop.run_until_complete(_drive(server, measured, keep_open)), 0)[1], (0, 1))
        if prof is not None:
            prof.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        report = ""
        if prof is not None:
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(35)
            report = buf.getvalue()
    finally:
        loop.close()
    n = max(1, requests)
    return HotPathResult(pods, requests, cpu / n * 1e6, wall / n * 1e6), report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, nargs="+", default=[4, 64])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--config", type=Path, default=None, help="scheduler config (default: embedded)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the measured requests")
    parser.add_argument("--json", action="store_true", help="one JSON object per pool size")
    parser.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                        help="a header every request carries, e.g. x-llm-d-slo-ttft-ms=1500 (repeatable)")
    args = parser.parse_args(argv)
    headers = []
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            parser.error(f"--header takes NAME=VALUE, got {item!r}")
        headers.append((name.strip().lower(), value.strip()))
    requests = max(0, min(args.requests, 200_000))
    for pods in args.pods:
        result, report = run(pods, requests, max(0, args.warmup), args.config, args.profile, headers)
        if args.json:
            print(json.dumps({"pods": result.pods, "requests": result.requests,
                              "cpu_us_per_request": round(result.cpu_us_per_request, 1),
                              "wall_us_per_request": round(result.wall_us_per_request, 1)}))
        else:
            print(f"pods={pods} requests={requests} cpu_us_per_request={result.cpu_us_per_request:.1f} "
                  f"wall_us_per_request={result.wall_us_per_request:.1f}")
        if report:
            print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
