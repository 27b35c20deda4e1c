"""epp/server/h2grpc.py against independent peers: grpcio's own client (the gRPC library, with
its HTTP/2 flow control, 16 KB frames and cancellation) and hand-made frames for the HTTP/2
corner cases a gRPC client does not produce (RFC 9113)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import hpack
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.observability.grpc_health import GrpcHealthReporter
from epp.observability.health import ReadinessProbe
from epp.server.h2grpc import PREFACE, H2GrpcServer, HeaderBlockDecoder, block_keeps_table

ECHO = "/test.Echo/Stream"
UNARY = "/test.Echo/Unary"


def _identity(b: bytes) -> bytes:
    return b


class Recorder:
    def __init__(self) -> None:
        self.cleaned = asyncio.Event()
        self.started = asyncio.Event()

    async def echo(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[bytes]:
        self.started.set()
        try:
            async for msg in requests:
                if msg == b"boom":
                    raise RuntimeError("the method failed")
                if msg.startswith(b"big:"):
                    yield bytes([65]) * int(msg[4:])
                else:
                    yield b"echo:" + msg
        finally:
            self.cleaned.set()

    async def unary(self, raw: bytes) -> bytes:
        return raw[::-1]


async def _server(rec: Recorder, **kw: Any) -> H2GrpcServer:
    server = H2GrpcServer("127.0.0.1", 0, **kw)
    server.add_stream_method(ECHO, rec.echo, bytes)
    server.add_unary_method(UNARY, rec.unary)
    await server.start()
    return server


def _channel(server: H2GrpcServer) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")


async def test_stream_messages_both_ways_with_grpcio_client() -> None:
    rec = Recorder()
    server = await _server(rec)
    try:
        async with _channel(server) as ch:
            call = ch.stream_stream(ECHO, request_serializer=_identity, response_deserializer=_identity)()
            answers = []
            for word in (b"a", b"bb", b""):
                await call.write(word)
                answers.append(await call.read())
            await call.done_writing()
            assert await call.read() == grpc.aio.EOF
            assert answers == [b"echo:a", b"echo:bb", b"echo:"]
            assert await call.code() == grpc.StatusCode.OK
            assert rec.cleaned.is_set()
    finally:
        await server.stop(0)


async def test_large_messages_respect_flow_control_and_frame_size() -> None:
    # 3 MB out: far past grpcio's initial 64 KB windows and its 16 KB frames, so the server
    # must split frames and wait for WINDOW_UPDATEs; 2 MB in arrives in many DATA frames.
    rec = Recorder()
    server = await _server(rec)
    try:
        async with _channel(server) as ch:
            call = ch.stream_stream(ECHO, request_serializer=_identity, response_deserializer=_identity)()
            await call.write(b"big:3000000")
            assert await call.read() == b"A" * 3_000_000
            payload = bytes(range(256)) * 8192  # 2 MiB
            await call.write(payload)
            assert await call.read() == b"echo:" + payload
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
    finally:
        await server.stop(0)


async def test_many_concurrent_streams_on_one_connection() -> None:
    rec = Recorder()
    server = await _server(rec)
    try:
        async with _channel(server) as ch:
            method = ch.stream_stream(ECHO, request_serializer=_identity, response_deserializer=_identity)

            async def one(i: int) -> bytes:
                call = method()
                await call.write(str(i).encode())
                got = await call.read()
                await call.done_writing()
                assert await call.code() == grpc.StatusCode.OK
                return bytes(got)

            got = await asyncio.gather(*(one(i) for i in range(200)))
            assert got == [b"echo:" + str(i).encode() for i in range(200)]
            assert len(server.connections) == 1
    finally:
        await server.stop(0)


async def test_unary_unknown_method_and_failing_method_statuses() -> None:
    rec = Recorder()
    server = await _server(rec)
    try:
        async with _channel(server) as ch:
            unary = ch.unary_unary(UNARY, request_serializer=_identity, response_deserializer=_identity)
            assert await unary(b"abc") == b"cba"
            missing = ch.unary_unary("/test.Echo/Nope", request_serializer=_identity,
                                     response_deserializer=_identity)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await missing(b"x")
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "/test.Echo/Nope" in (err.value.details() or "")
            call = ch.stream_stream(ECHO, request_serializer=_identity, response_deserializer=_identity)()
            await call.write(b"boom")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            assert err.value.code() == grpc.StatusCode.INTERNAL
    finally:
        await server.stop(0)


async def test_oversize_message_is_refused_with_resource_exhausted() -> None:
    rec = Recorder()
    server = await _server(rec, max_message_bytes=1000)
    try:
        async with _channel(server) as ch:
            call = ch.stream_stream(ECHO, request_serializer=_identity, response_deserializer=_identity)()
            await call.write(b"x" * 5000)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await server.stop(0)


async def test_client_cancel_and_closed_connection_cancel_the_method() -> None:
    rec = Recorder()
    server = await _server(rec)
    try:
        async with _channel(server) as ch:
            call = ch.stream_stream(ECHO, request_serializer=_identity, response_deserializer=_identity)()
            await call.write(b"1")
            assert await call.read() == b"echo:1"
            call.cancel()  # RST_STREAM(CANCEL): the method must stop waiting and clean up
            await asyncio.wait_for(rec.cleaned.wait(), 5)
        rec2 = Recorder()
        server.add_stream_method(ECHO, rec2.echo, bytes)
        ch = _channel(server)
        call = ch.stream_stream(ECHO, request_serializer=_identity, response_deserializer=_identity)()
        await call.write(b"1")
        assert await call.read() == b"echo:1"
        await ch.close()  # the whole connection goes away
        await asyncio.wait_for(rec2.cleaned.wait(), 5)
        await asyncio.sleep(0.05)
        assert all(not c.streams for c in server.connections)
    finally:
        await server.stop(0)


async def test_graceful_stop_lets_running_streams_finish_and_refuses_new_ones() -> None:
    rec = Recorder()
    server = await _server(rec)
    async with _channel(server) as ch:
        method = ch.stream_stream(ECHO, request_serializer=_identity, response_deserializer=_identity)
        call = method()
        await call.write(b"1")
        assert await call.read() == b"echo:1"
        stopping = asyncio.create_task(server.stop(5))
        await asyncio.sleep(0.1)
        await call.write(b"2")  # the running stream still works during the grace period
        assert await call.read() == b"echo:2"
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        await asyncio.wait_for(stopping, 5)
        late = method()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await late.write(b"3")
            await late.read()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_check_answers_like_grpcio_health_servicer() -> None:
    class Ready(ReadinessProbe):
        def __init__(self) -> None:
            pass

        def check(self) -> Any:
            return type("R", (), {"ready": True})()

    reporter = GrpcHealthReporter(Ready())
    server = H2GrpcServer("127.0.0.1", 0)
    server.add_unary_method("/grpc.health.v1.Health/Check", reporter.check)
    server.add_stream_method("/grpc.health.v1.Health/Watch", reporter.watch, bytes)
    await server.start()
    await reporter.start()
    try:
        async with _channel(server) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            for service in ("", "readiness", "liveness", "envoy.service.ext_proc.v3.ExternalProcessor"):
                got = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert got.status == health_pb2.HealthCheckResponse.SERVING, service
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="readiness"))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            unknown = stub.Watch(health_pb2.HealthCheckRequest(service="nope"))
            assert (await unknown.read()).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            unknown.cancel()
            await reporter.stop()
            got = await stub.Check(health_pb2.HealthCheckRequest(service="readiness"))
            assert got.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # A Watch sees the change without asking again.
            changed = await asyncio.wait_for(watch.read(), 5)
            assert changed.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
    finally:
        await reporter.stop()
        await server.stop(0)


# --- raw frames ------------------------------------------------------------------------------

def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


Frame = tuple[int, int, int, bytes]  # type, flags, stream id, payload


async def _read_frames(reader: asyncio.StreamReader, until: Any, timeout: float = 5) -> list[Frame]:
    frames: list[Frame] = []

    async def run() -> None:
        while True:
            head = await reader.readexactly(9)
            n = int.from_bytes(head[:3], "big")
            f = (head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, await reader.readexactly(n))
            frames.append(f)
            if until(f):
                return

    await asyncio.wait_for(run(), timeout)
    return frames


async def test_settings_ping_and_padded_continued_headers_from_raw_frames() -> None:
    rec = Recorder()
    server = await _server(rec, max_concurrent_streams=7)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(PREFACE + _frame(4, 0, 0, struct.pack(">HI", 0x4, 1 << 20)))
        frames = await _read_frames(reader, lambda f: f[0] == 4 and f[1] & 1)  # our SETTINGS ack
        settings = next(f for f in frames if f[0] == 4 and not f[1] & 1)[3]
        values = dict(struct.unpack(">HI", settings[i:i + 6]) for i in range(0, len(settings), 6))
        assert values[0x3] == 7  # MAX_CONCURRENT_STREAMS advertised
        writer.write(_frame(6, 0, 0, b"12345678"))  # PING
        frames = await _read_frames(reader, lambda f: f[0] == 6)
        assert frames[-1][1] == 1 and frames[-1][3] == b"12345678"
        # A request whose header block is split over HEADERS(PADDED) + CONTINUATION, then a
        # padded DATA frame carrying one gRPC message and END_STREAM.
        block = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", ECHO),
                                        (":authority", "x"), ("content-type", "application/grpc"),
                                        ("te", "trailers")])
        half = len(block) // 2
        writer.write(_frame(1, 0x8, 1, bytes([3]) + block[:half] + b"\0\0\0")
                     + _frame(9, 0x4, 1, block[half:]))
        msg = b"\0" + struct.pack(">I", 2) + b"hi"
        writer.write(_frame(0, 0x8 | 0x1, 1, bytes([4]) + msg + b"\0" * 4))
        frames = await _read_frames(reader, lambda f: f[0] == 1 and f[1] & 1)  # trailers
        data = b"".join(f[3] for f in frames if f[0] == 0 and f[2] == 1)
        assert data == b"\0" + struct.pack(">I", 7) + b"echo:hi"
        trailers = hpack.Decoder().decode(frames[-1][3])
        assert ("grpc-status", "0") in trailers
        writer.close()
    finally:
        await server.stop(0)


async def test_bad_preface_gets_goaway_and_close() -> None:
    server = await _server(Recorder())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        frames = await _read_frames(reader, lambda f: f[0] == 7)
        assert int.from_bytes(frames[-1][3][4:8], "big") == 1  # PROTOCOL_ERROR
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        await server.stop(0)


async def test_keepalive_closes_a_connection_whose_peer_stopped_answering() -> None:
    rec = Recorder()
    server = await _server(rec, keepalive_s=0.2, keepalive_timeout_s=0.3)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(PREFACE + _frame(4, 0, 0))
        frames = await _read_frames(reader, lambda f: f[0] == 6)  # the server's PING
        assert frames[-1][1] == 0
        # A peer that answers keeps the connection...
        writer.write(_frame(6, 1, 0, frames[-1][3]))
        frames = await _read_frames(reader, lambda f: f[0] == 6)  # ...and gets the next PING
        # ...one that does not is dropped.
        frames = await _read_frames(reader, lambda f: f[0] == 7, timeout=5)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert not server.connections
    finally:
        await server.stop(0)


async def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        server = H2GrpcServer("127.0.0.1", s.getsockname()[1])
        with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1"):
            await server.start()


def test_header_block_memo_decodes_like_hpack_through_table_changes() -> None:
    # A stream of blocks from hpack's own encoder (the independent reference): repeated blocks
    # that only index (memoised), new values that insert into the dynamic table (which must
    # drop the memo), never-indexed literals, Huffman or not, and a table size change.
    import random

    rng = random.Random(7)
    encoder = hpack.Encoder()
    reference = hpack.Decoder()
    ours = HeaderBlockDecoder(1 << 20)
    base = [(":method", "POST"), (":scheme", "http"), (":path", ECHO), (":authority", "epp"),
            ("content-type", "application/grpc"), ("te", "trailers")]
    memo_hits = 0
    for i in range(400):
        headers: list[Any] = list(base)
        roll = rng.random()
        if roll < 0.3:
            headers.append(("x-request-id", f"id-{rng.randrange(6)}"))  # a few values recur
        elif roll < 0.4:
            headers.append(hpack.NeverIndexedHeaderTuple("authorization", f"k{rng.randrange(3)}"))
        if i == 200:
            encoder.header_table_size = 256  # emits a dynamic table size update
        block = encoder.encode(headers, huffman=rng.random() < 0.7)
        before = len(ours._memo)
        got = ours.decode(block)
        memo_hits += block in ours._memo and len(ours._memo) == before
        want = [(bytes(k), bytes(v)) for k, v in reference.decode(block, raw=True)]
        assert got == want, i
    assert memo_hits > 100  # the memo was used, not just filled and dropped


def test_block_keeps_table_reads_each_representation() -> None:
    assert block_keeps_table(b"\x83\x86")  # indexed fields only
    assert block_keeps_table(b"\x04\x03abc")  # literal without indexing, indexed name (:path)
    assert block_keeps_table(b"\x10\x01k\x01v")  # never indexed, new name
    assert block_keeps_table(b"\x0f\x10\x01x")  # 4-bit prefix continued: name index 31
    assert not block_keeps_table(b"\x83\x44\x03abc")  # incremental indexing (:path)
    assert not block_keeps_table(b"\x3f\xe1\x1f")  # dynamic table size update
