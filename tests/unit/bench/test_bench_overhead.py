import asyncio
import json
import os
from pathlib import Path

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


def test_ext_proc_modes_render_the_envoy_processing_mode_they_name() -> None:
    import pytest
    import yaml

    from epp.bench.cli import overhead_settings
    from epp.bench.overhead import EXT_PROC_MODES, OverheadSettings
    from epp.localstack.envoy_config import EnvoyConfigParams, envoy_config_yaml
    from tests.unit.bench.test_bench_cli import parse

    def ext_proc(mode: str) -> dict[str, object]:
        doc = yaml.safe_load(envoy_config_yaml(EnvoyConfigParams(**EXT_PROC_MODES[mode])))
        filters = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
            "http_filters"]
        cfg: dict[str, object] = next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")["typed_config"]
        return cfg

    streamed, buffered, duplex = ext_proc("streamed"), ext_proc("buffered"), ext_proc("full-duplex")
    assert streamed["processing_mode"]["request_body_mode"] == "STREAMED"  # type: ignore[index]
    assert streamed["send_body_without_waiting_for_header_response"] is True
    assert buffered["processing_mode"]["request_body_mode"] == "BUFFERED"  # type: ignore[index]
    assert buffered["send_body_without_waiting_for_header_response"] is False
    assert streamed["processing_mode"]["response_trailer_mode"] == "SEND"  # type: ignore[index]
    assert duplex["processing_mode"]["request_body_mode"] == "FULL_DUPLEX_STREAMED"  # type: ignore[index]

    settings = overhead_settings(parse("overhead", "--ext-proc-mode", "full-duplex", "--ext-proc-mode",
                                       "buffered"), Path("/tmp/unused"))
    assert tuple(settings.ext_proc_modes) == ("full-duplex", "buffered")
    settings.validate()
    assert tuple(overhead_settings(parse("overhead"), Path("/tmp/unused")).ext_proc_modes) == ("streamed",)
    with pytest.raises(ValueError, match="skip-headers"):
        OverheadSettings(ext_proc_modes=("buffered", "skip-headers")).validate()


def test_per_mode_runs_survive_the_results_json(tmp_path: Path) -> None:
    from epp.bench.machine import MachineFacts
    from epp.bench.overhead import OverheadResult, PoolOverhead
    from epp.bench.report import RunInfo
    from epp.bench.results import load_results, save_results
    from epp.bench.stats import Distribution

    dist = Distribution(10, 0.001, 0.001, 0.002, 0.003)
    pool = PoolOverhead(pods=4, direct_c1=dist, epp_c1=dist, direct_cn=dist, epp_cn=dist, concurrency=64,
                        direct_cn_rps=1.0, epp_cn_rps=1.0, epp_errors=0, epp_cpu_us_per_request=800.0,
                        epp_idle_cpu_percent=1.0, ext_proc_mode="buffered",
                        mode_added_c1_p50_runs_ms={"full-duplex": [1.4, 1.5]},
                        mode_decisions_runs={"full-duplex": [1100.0, 1200.0]})
    path = Path(tmp_path) / "results.json"
    info = RunInfo("c", "d", MachineFacts("cpu", 2, "py", "e", "v", "l", "0"), False, 4, 0.5)
    save_results(path, [], OverheadResult(pools=[pool]), info)
    _, overhead, _ = load_results(path)
    assert overhead is not None
    back = overhead.pools[0]
    assert back.ext_proc_mode == "buffered"
    assert back.mode_added_c1_p50_runs_ms == {"full-duplex": [1.4, 1.5]}
    assert back.mode_decisions_runs == {"full-duplex": [1100.0, 1200.0]}
