"""Full P/D path: client -> Envoy -> EPP (ext_proc, P/D config) -> sidecar -> simulated pods.

The local stack (`epp.localstack`, what `make run PD=1` starts) runs 1 prefill pod and 2
decode pods with a routing sidecar each; the EPP is started with
deploy/vllm/pd/epp-config-pd.yaml. A long new prompt must be routed to a decode pod with
remote prefill (the decode pod reports KV pulled from the prefill pod); a short prompt, or
the same long prompt again (now cached on its decode pod), must be decoded locally.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from epp.localstack.stack import LocalStack, StackConfig, local_stack
from tests.helpers.procs import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PD_CONFIG = REPO / "deploy/vllm/pd/epp-config-pd.yaml"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    run_dir: Path = tmp_path_factory.mktemp("pd-stack")
    cfg = StackConfig(
        run_dir=run_dir, pd=True, ports_free=True, epp_config=PD_CONFIG, time_scale=0.05,
        kv_events=False,
    )
    with local_stack(cfg) as running:
        yield running


def _complete(stack: LocalStack, prompt: str, max_tokens: int = 4) -> httpx.Response:
    r = httpx.post(
        stack.url + "/v1/completions",
        json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens},
        timeout=30,
    )
    assert r.status_code == 200, f"{r.status_code} {r.text}\n{stack.tail('epp')}"
    return r


def test_long_new_prompt_is_prefilled_remotely_then_cached(stack: LocalStack) -> None:
    prompt = "Summarize the history of the printing press in detail. " * 40  # ~550 tokens
    first = _complete(stack, prompt)
    assert first.headers["x-sim-pod"].startswith("vllm-decode-")
    assert int(first.headers["x-sim-kv-transferred-tokens"]) > 256

    again = _complete(stack, prompt)
    assert again.headers["x-sim-pod"] == first.headers["x-sim-pod"]  # prefix affinity
    assert again.headers["x-sim-kv-transferred-tokens"] == "0"  # cached: local prefill


def test_short_prompt_is_decoded_locally(stack: LocalStack) -> None:
    r = _complete(stack, "Hello there!")
    assert r.headers["x-sim-pod"].startswith("vllm-decode-")
    assert r.headers["x-sim-kv-transferred-tokens"] == "0"


def _disaggregated_total(stack: LocalStack) -> float:
    """Requests the decode pods' sidecars served with remote prefill, summed."""
    total = 0.0
    for pod in stack.pods:
        if pod.sidecar_port:
            text = httpx.get(f"http://127.0.0.1:{pod.sidecar_port}/sidecar/metrics", timeout=5).text
            for line in text.splitlines():
                if line.startswith('epp_sidecar_requests_total{mode="disaggregated"}'):
                    total += float(line.rsplit(" ", 1)[1])
    return total


def test_streaming_through_envoy_and_sidecar(stack: LocalStack) -> None:
    before = _disaggregated_total(stack)
    prompt = "Explain the theory of relativity to a curious child. " * 40
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", stack.url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-sim-pod"].startswith("vllm-decode-")
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 6
    # (The simulator sends its headers before the KV pull when streaming, so the sidecar's
    # own count is what shows the remote prefill here.)
    assert _disaggregated_total(stack) == before + 1
