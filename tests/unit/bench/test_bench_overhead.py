import asyncio
import json
import os

from epp.bench.overhead import chat_bodies, closed_loop, http_request, parse_head, session_cpu_seconds
from epp.bench.routers import free_ports


def test_chat_bodies_are_about_2kb_of_valid_chat_json() -> None:
    bodies = chat_bodies()
    assert len(bodies) == 64 and len(set(bodies)) == 64
    for body in bodies:
        doc = json.loads(body)
        assert doc["messages"][0]["role"] == "user"
        assert 1800 <= len(body) <= 2300


def test_http_request_and_head_parsing() -> None:
    req = http_request(8080, b"{}")
    assert req.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and req.endswith(b"\r\n\r\n{}")
    assert b"Content-Length: 2\r\n" in req
    assert parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 17\r\nserver: envoy\r\n\r\n") == (200, 17)
    assert parse_head(b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n") == (503, -1)


def test_free_ports_are_distinct() -> None:
    ports = free_ports(50)
    assert len(set(ports)) == 50


async def test_closed_loop_against_a_loopback_server_counts_successes_and_errors() -> None:
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                served += 1
                if served % 5 == 0:  # every fifth answer is an error, sent chunked
                    writer.write(b"HTTP/1.1 503 Unavailable\r\ntransfer-encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        run = await closed_loop(port, [b'{"a":1}', b'{"b":2}'], concurrency=4, total=100, max_seconds=20)
    assert len(run.latencies_s) + run.errors == 100
    assert run.errors == 20
    assert run.throughput > 0


def test_session_cpu_seconds_counts_this_session() -> None:
    spent = 0
    for i in range(200_000):
        spent += i * i
    assert spent > 0
    assert session_cpu_seconds(os.getsid(0)) > 0
