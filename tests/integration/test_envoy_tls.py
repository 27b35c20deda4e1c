"""TLS between the real Envoy and the EPP: Envoy's EPP cluster has an upstream TLS context
(envoy.transport_sockets.tls, ALPN h2, the EPP's certificate as trusted CA) and the EPP
serves `--secure-serving --cert-path`, as a gateway and the EPP do in Kubernetes."""

from __future__ import annotations

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.localstack.stack import LocalStack
from epp.server.tls import CERT_FILE
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _epp_health(stack: LocalStack, credentials: grpc.ChannelCredentials | None) -> bool:
    target = f"127.0.0.1:{stack.cfg.grpc_port}"
    channel = (grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(
        target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]))
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def test_requests_route_through_envoy_over_tls_to_the_epp(stack_factory: StackFactory) -> None:
    stack = stack_factory(pods=2, time_scale=0.1, kv_events=False, epp_tls=True)
    # The generated Envoy config really asks for TLS to the EPP.
    envoy = yaml.safe_load((stack.cfg.run_dir / "envoy.yaml").read_text())
    (epp_cluster,) = [c for c in envoy["static_resources"]["clusters"] if c["name"] == "epp"]
    assert epp_cluster["transport_socket"]["name"] == "envoy.transport_sockets.tls"

    for i in range(6):
        r = httpx.post(f"{stack.url}/v1/completions", timeout=10,
                       json={"model": MODEL, "prompt": f"tls request {i}", "max_tokens": 2})
        assert r.status_code == 200, r.text
    # The EPP (reachable only over TLS) made the picks: its decision counter moved.
    metrics = httpx.get(f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics", timeout=5).text
    line = next(ln for ln in metrics.splitlines()
                if ln.startswith("inference_objective_request_total{") and MODEL in ln)
    assert float(line.split()[-1]) >= 6

    # The port speaks TLS only: plaintext gRPC fails, TLS with the stack's CA succeeds.
    assert not _epp_health(stack, None)
    ca = (stack.cfg.run_dir / "tls" / CERT_FILE).read_bytes()
    assert _epp_health(stack, grpc.ssl_channel_credentials(root_certificates=ca))

