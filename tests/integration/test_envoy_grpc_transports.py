"""Both servers of the ext_proc port behind the real Envoy: the EPP's own HTTP/2 server (the
default, epp/server/h2grpc.py) and grpcio's (`--grpc-transport grpcio`), each routing requests,
answering an error from the EPP as an OpenAI-style body, and passing Envoy's gRPC health checks
(the ext_proc cluster checks the `readiness` service on the same port)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.mark.parametrize("transport", ["native", "grpcio"])
def test_routes_and_rejects_through_envoy_on_either_server(stack_factory: StackFactory, transport: str) -> None:
    stack = stack_factory(pods=2, time_scale=0.1, kv_events=False, epp_args=["--grpc-transport", transport])
    ports = {p.serving_port for p in stack.pods}
    with httpx.Client(timeout=20) as client:
        for i in range(6):
            r = client.post(f"{stack.url}/v1/completions",
                            json={"model": MODEL, "prompt": f"hello {i} " * 20, "max_tokens": 4})
            assert r.status_code == 200, r.text
            host, port = r.headers["x-gateway-destination-endpoint-served"].rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) in ports
        bad = client.post(f"{stack.url}/v1/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
        assert bad.status_code == 400, bad.text
        error = bad.json()["error"]
        assert error["type"] == "BadRequestError" and error["message"], error
        # Envoy's active gRPC health check of the ext_proc cluster passes on this server.
        stats = client.get(f"http://127.0.0.1:{stack.cfg.admin_port}/stats?filter=^cluster.epp.health_check").text
    counts = dict(line.split(": ", 1) for line in stats.splitlines() if ": " in line)
    assert int(counts["cluster.epp.health_check.success"]) > 0, stats
    # (Failures before the EPP listened, while the stack started, are expected.)
    assert int(counts["cluster.epp.health_check.healthy"]) == 1, stats
