"""The processing modes gateways use: GIE's FULL_DUPLEX_STREAMED body and response usage accounting."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def test_full_duplex_with_usage_accounting(stack_factory: StackFactory) -> None:
    stack = stack_factory(pods=2, time_scale=0.1, kv_events=False,
                          request_body_mode="FULL_DUPLEX_STREAMED", response_body_mode="STREAMED")
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
        metrics = client.get(f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics").text
    counts = {line.split("{")[0]: float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith(("inference_objective_output_tokens_count{",
                                  "inference_objective_input_tokens_count{")) and MODEL in line}
    # Both requests reported their usage through the response path.
    assert counts.get("inference_objective_output_tokens_count") == 2
    assert counts.get("inference_objective_input_tokens_count") == 2
