"""P/D through the real sidecar process between simulated prefill and decode pods.

The simulator pods (epp.sim, in-process on loopback) speak vLLM's NixlConnector protocol:
a prefill request returns kv_transfer_params, and a decode pod that receives them reports
the prompt tokens it pulled instead of computing in `x-sim-kv-transferred-tokens`. The
sidecar runs as `python -m epp sidecar`, exactly as in a pod.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI

from epp.localstack.stack import free_ports
from epp.sim.cluster import SimCluster, simulated_pods
from tests.helpers.procs import PYTHON, Proc

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 60  # ~600 tokens


@dataclass
class PDRig:
    pods: SimCluster
    sidecar_url: str
    sidecar: Proc
    dead_port: int  # allowed as a prefill target, nothing listens on it

    @property
    def prefill_hostport(self) -> str:
        return self.pods[0].hostport

    @property
    def decode_name(self) -> str:
        return self.pods[1].name


async def _wait_ready(url: str, proc: Proc) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            if not proc.alive():
                raise RuntimeError(f"sidecar exited:\n{proc.output()}")
            try:
                if (await client.get(url, timeout=0.5)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"sidecar not ready at {url}:\n{proc.output()}")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[PDRig]:
    async with simulated_pods(
        2, per_pod=[{"role": "prefill", "name": "sim-prefill-0"}, {"role": "decode", "name": "sim-decode-0"}],
        latency={"time_scale": 0.05},
    ) as pods:
        port, dead_port = free_ports(2)
        sidecar = Proc(
            [PYTHON, "-m", "epp", "sidecar", "--host", "127.0.0.1", "--port", str(port),
             "--decoder-url", pods[1].url, "--prefill-timeout", "10",
             "--allowed-prefill-targets", f"{pods[0].hostport},127.0.0.1:{dead_port}"],
            tmp_path / "sidecar.log",
        )
        try:
            url = f"http://127.0.0.1:{port}"
            await _wait_ready(url + "/health", sidecar)
            yield PDRig(pods, url, sidecar, dead_port)
        finally:
            sidecar.stop()


async def _sidecar_metric(rig: PDRig, line_prefix: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(rig.sidecar_url + "/sidecar/metrics")).text
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_remote_prefill_then_decode_pulls_the_kv(rig: PDRig) -> None:
    async with httpx.AsyncClient(base_url=rig.sidecar_url, timeout=30) as client:
        r = await client.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 8},
            headers={"x-prefiller-host-port": rig.prefill_hostport},
        )
    assert r.status_code == 200, r.text
    assert r.headers["x-sim-pod"] == rig.decode_name
    assert int(r.headers["x-sim-kv-transferred-tokens"]) > 500  # prompt KV came from prefill
    assert r.json()["usage"]["completion_tokens"] == 8
    assert await _sidecar_metric(rig, 'epp_sidecar_requests_total{mode="disaggregated"}') == 1


async def test_without_header_the_decode_pod_prefills_itself(rig: PDRig) -> None:
    async with httpx.AsyncClient(base_url=rig.sidecar_url, timeout=30) as client:
        body = {"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 4}
        r = await client.post("/v1/completions", json=body)
    assert r.status_code == 200 and r.headers["x-sim-kv-transferred-tokens"] == "0"


async def test_streaming_chat_with_openai_client(rig: PDRig) -> None:
    client = AsyncOpenAI(base_url=rig.sidecar_url + "/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": LONG_PROMPT}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-prefiller-host-port": rig.prefill_hostport},
    )
    text, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    await client.close()
    assert usage is not None and usage.completion_tokens == 6  # stream_options restored for decode
    assert "".join(text)
    assert await _sidecar_metric(rig, 'epp_sidecar_requests_total{mode="disaggregated"}') == 1


async def test_prefiller_down_falls_back_to_local_prefill(rig: PDRig) -> None:
    async with httpx.AsyncClient(base_url=rig.sidecar_url, timeout=30) as client:
        r = await client.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": LONG_PROMPT, "max_tokens": 4},
            headers={"x-prefiller-host-port": f"127.0.0.1:{rig.dead_port}"},
        )
        metrics = (await client.get("/metrics")).text
    assert r.status_code == 200 and r.headers["x-sim-kv-transferred-tokens"] == "0"
    assert 'epp_sidecar_prefill_errors_total{reason="connect"} 1.0' in metrics
    assert "vllm:num_requests_running" in metrics  # the engine's metrics, forwarded
