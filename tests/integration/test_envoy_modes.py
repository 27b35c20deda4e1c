"""The processing modes gateways use: our STREAMED default, GIE's FULL_DUPLEX_STREAMED body
and BUFFERED, with response usage accounting and a rewritten body."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.mark.parametrize("mode", ["STREAMED", "FULL_DUPLEX_STREAMED"])
def test_one_round_trip_modes_with_usage_accounting(stack_factory: StackFactory, mode: str) -> None:
    stack = stack_factory(pods=2, time_scale=0.1, kv_events=False,
                          request_body_mode=mode, response_body_mode="STREAMED")
    prompt = "The quick brown fox jumps over the lazy dog. " * 400  # ~18 KB: several body chunks
    with httpx.Client(timeout=20) as client:
        r = client.post(f"{stack.url}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 7})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 7
        with client.stream("POST", f"{stack.url}/v1/chat/completions", json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                "stream": True, "stream_options": {"include_usage": True}}) as resp:
            assert resp.status_code == 200
            events = [line for line in resp.iter_lines() if line.startswith("data:")]
        assert events[-1] == "data: [DONE]"
        # Both requests report their usage through the response path; the EPP records it when
        # Envoy ends the ext_proc stream, a moment after the client got its last byte.
        deadline = time.monotonic() + 10
        while True:
            metrics = client.get(f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics").text
            counts = {line.split("{")[0]: float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith(("inference_objective_output_tokens_count{",
                                          "inference_objective_input_tokens_count{")) and MODEL in line}
            if counts.get("inference_objective_output_tokens_count") == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert counts.get("inference_objective_output_tokens_count") == 2
    assert counts.get("inference_objective_input_tokens_count") == 2


def test_inference_model_rewrite_reaches_the_pod(stack_factory: StackFactory, tmp_path: object) -> None:
    from pathlib import Path

    objectives = Path(str(tmp_path)) / "models.yaml"
    objectives.write_text(f"""
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata:
  name: llama-alias
spec:
  modelName: llama-alias
  criticality: Critical
  poolRef:
    name: vllm-llama3-8b-instruct
  targetModels:
    - name: {MODEL}
      weight: 100
""")
    for mode in ("STREAMED", "BUFFERED", "FULL_DUPLEX_STREAMED"):
        stack = stack_factory(pods=1, time_scale=0.1, kv_events=False, objectives=objectives,
                              request_body_mode=mode)
        r = httpx.post(f"{stack.url}/v1/completions",
                       json={"model": "llama-alias", "prompt": "hi", "max_tokens": 2}, timeout=20)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == MODEL  # the pod saw the rewritten body
        stack.stop()


def test_subset_hint_from_envoy_metadata_is_honoured(stack_factory: StackFactory) -> None:
    stack = stack_factory(pods=3, time_scale=0.1, kv_events=False)
    # Envoy sets a subset hint naming two of the three pods, as a pre-filtering gateway would.
    allowed = [f"127.0.0.1:{p.serving_port}" for p in stack.pods[1:]]
    stack.cfg.subset_hint = allowed
    stack.restart_envoy()
    served = set()
    with httpx.Client(timeout=20) as client:
        for i in range(12):
            r = client.post(f"{stack.url}/v1/completions",
                            json={"model": MODEL, "prompt": f"distinct prompt {i} " * (i + 1), "max_tokens": 2})
            assert r.status_code == 200, r.text
            served.add(r.headers["x-gateway-destination-endpoint-served"])
    assert served <= set(allowed) and served, served


@pytest.mark.parametrize("bodies", ["NONE", "STREAMED"])
@pytest.mark.parametrize("mode", ["BUFFERED", "STREAMED", "FULL_DUPLEX_STREAMED"])
def test_a_request_counts_as_running_until_its_response_ends(stack_factory: StackFactory, mode: str,
                                                            bodies: str) -> None:
    # In the streamed modes Envoy 1.40 resets the ext_proc stream as soon as it has nothing left
    # to send: with the response side off that was right after the pick, and the EPP released the
    # request's in-flight charge at dispatch. The generated configs now ask for the response
    # trailers, which keeps the stream until the response ends.
    stack = stack_factory(pods=1, time_scale=0.5, kv_events=False, request_body_mode=mode,
                          response_body_mode=bodies)

    def running(client: httpx.Client) -> float:
        text = client.get(f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("inference_objective_running_requests{"))

    with httpx.Client(timeout=30) as client, client.stream(
            "POST", f"{stack.url}/v1/completions",
            json={"model": MODEL, "prompt": "count me", "max_tokens": 200, "stream": True}) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        next(line for line in lines if line.startswith("data:"))  # decoding has begun
        held = [running(client) for _ in range(5)]
        assert held == [1.0] * 5, held
        assert [line for line in lines if line.startswith("data:")][-1] == "data: [DONE]"
        deadline = time.monotonic() + 10
        while running(client) != 0.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running(client) == 0.0
