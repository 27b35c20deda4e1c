import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.bench.hotpath import main, request_messages, run


def test_messages_are_the_three_envoy_sends_for_a_buffered_request() -> None:
    msgs = [pb.ProcessingRequest.FromString(raw) for raw in request_messages(b'{"model":"m"}', "rid-7")]
    assert [m.WhichOneof("request") for m in msgs] == ["request_headers", "request_body", "response_headers"]
    headers = {h.key: h.raw_value for h in msgs[0].request_headers.headers.headers}
    assert headers["x-request-id"] == b"rid-7" and headers["content-length"] == b"13"
    assert msgs[1].request_body.end_of_stream


def test_run_routes_every_request_through_the_real_server_handler() -> None:
    result, report = run(pods=4, requests=40, warmup=10, profile=True)
    assert result.requests == 40 and result.pods == 4
    assert 0 < result.cpu_us_per_request < 1e6
    assert "_schedule" in report  # the profile covers ExtProcHandler's scheduling


def test_cli_exits_zero() -> None:
    assert main(["--pods", "2", "--requests", "20", "--warmup", "5", "--json"]) == 0


def test_header_option_adds_a_header_to_every_request() -> None:
    msgs = [pb.ProcessingRequest.FromString(raw)
            for raw in request_messages(b"{}", "rid-8", [("x-llm-d-slo-ttft-ms", "1500")])]
    headers = {h.key: h.raw_value for h in msgs[0].request_headers.headers.headers}
    assert headers["x-llm-d-slo-ttft-ms"] == b"1500" and headers["x-request-id"] == b"rid-8"
    assert main(["--pods", "2", "--requests", "10", "--warmup", "5", "--header", "x-llm-d-slo-ttft-ms=1500"]) == 0


def test_header_option_without_a_value_is_refused() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--pods", "2", "--requests", "1", "--header", "x-llm-d-slo-ttft-ms"])
    assert exc.value.code == 2
