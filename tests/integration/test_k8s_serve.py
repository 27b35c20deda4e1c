"""`epp serve` in Kubernetes mode as a real process: API-server stand-in + simulator pod.

Covers the wiring the unit-level tests cannot: flags -> KubernetesSource -> readiness,
config reload from the watched file, leader election and lease release on shutdown.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.helpers.fake_apiserver import FakeApiServer, wait_until
from tests.helpers.procs import PYTHON, REPO, Proc, free_port

LEASES = FakeApiServer.collection("leases", "default", "coordination.k8s.io", "v1")


async def test_epp_serve_follows_the_cluster(tmp_path: Path) -> None:
    api = FakeApiServer()
    await api.start()
    sim_port, grpc_port, health_port, metrics_port, probe_port = (free_port() for _ in range(5))
    sim = Proc([PYTHON, "-m", "epp", "sim", "--host", "127.0.0.1", "--port", str(sim_port)], tmp_path / "sim.log")
    api.put_pool_v1("pool", {"app": "sim"}, [sim_port])
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "epp" / "config" / "default-config.yaml").read_text())
    epp = Proc([
        PYTHON, "-m", "epp", "serve", "--log-format", "text",
        "--kubeconfig", str(api.write_kubeconfig(tmp_path / "kubeconfig")),
        "--pool-name", "pool", "--pool-namespace", "default",
        "--grpc-port", str(grpc_port), "--health-port", str(health_port), "--metrics-port", str(metrics_port),
        "--grpc-health-port", str(probe_port),
        "--config", str(config), "--config-watch-interval", "0.1",
        "--leader-elect", "--identity", "epp-0",
    ], tmp_path / "epp.log")
    readyz = f"http://127.0.0.1:{health_port}/readyz"
    last: dict[str, int] = {"status": 0, "healthy": -1}
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:

            async def poll_ready() -> None:
                while True:
                    try:
                        resp = await client.get(readyz)
                        last["status"], last["healthy"] = resp.status_code, resp.json()["healthy_endpoints"]
                    except (httpx.HTTPError, ValueError):
                        last["status"] = 0
                    await asyncio.sleep(0.05)

            poller = asyncio.create_task(poll_ready())
            try:
                # Ready once the pool is synced, before any pod: it can answer (with 503s).
                await wait_until(lambda: last["status"] == 200 and last["healthy"] == 0, timeout=30)
                # Kubernetes mode serves TLS by default (a self-signed certificate).
                assert await asyncio.to_thread(_grpc_health, grpc_port, tls=True)
                assert not await asyncio.to_thread(_grpc_health, grpc_port, tls=False)
                # The kubelet's gRPC probes: plaintext, on a port of their own.
                # The gRPC reporter follows the probe on its own 0.5 s tick, so readiness may
                # trail /readyz by one tick.
                for service in ("liveness", "readiness"):
                    deadline = asyncio.get_running_loop().time() + 5
                    while not await asyncio.to_thread(_grpc_health, probe_port, tls=False, service=service):
                        assert asyncio.get_running_loop().time() < deadline, f"{service} not SERVING"
                        await asyncio.sleep(0.1)
                api.put_pod("sim-0", "127.0.0.1", {"app": "sim"})
                await wait_until(lambda: last["status"] == 200 and last["healthy"] == 1, timeout=30)
                await wait_until(lambda: (api.get(LEASES, "pool-epp-leader") or {}).get("spec", {})
                                 .get("holderIdentity") == "epp-0")
                config.write_text(config.read_text().replace("weight: 3", "weight: 4"))
                await wait_until(lambda: "prefix-cache-scorer*4" in epp.output(), timeout=15)
                api.put_pod("sim-0", "127.0.0.1", {"app": "sim"}, ready=False)
                await wait_until(lambda: last["status"] == 200 and last["healthy"] == 0, timeout=15)
            finally:
                poller.cancel()
        # Stop in a thread: the API server runs on this event loop and must answer the
        # lease release the EPP sends while shutting down.
        await asyncio.to_thread(epp.stop, 15.0)
        lease = api.get(LEASES, "pool-epp-leader")
        assert lease is not None and lease["spec"]["holderIdentity"] == ""
    finally:
        await asyncio.to_thread(epp.stop)
        await asyncio.to_thread(sim.stop)
        await api.stop()


def _grpc_health(port: int, *, tls: bool, service: str = "liveness") -> bool:
    """gRPC health over TLS without verifying the self-signed certificate (what gateways do
    with the reference EPP: trust the certificate the server presents) or over plaintext."""
    import ssl

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"127.0.0.1:{port}"
    if tls:
        cert = ssl.get_server_certificate(("127.0.0.1", port)).encode()
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=cert),
                                      options=[("grpc.ssl_target_name_override", "localhost")])
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
