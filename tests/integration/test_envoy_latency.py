"""Predicted-latency routing through the real Envoy: response headers and bodies flow through
ext_proc, the predictor trains on what it observes, and the SLO metrics move."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import pytest

from epp.localstack.stack import LocalStack
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CONFIG = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: predicted-latency-producer
  parameters: {minSamples: 10, minPodSamples: 10, retrainIntervalS: 0.05, deferBehindPrefillTokens: 4096}
- type: latency-slo-admitter
- type: slo-headroom-tier-filter
- type: latency-scorer
- type: active-request-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: latency-slo-admitter
  - pluginRef: slo-headroom-tier-filter
  - pluginRef: latency-scorer
    weight: 10
  - pluginRef: active-request-scorer
  - pluginRef: max-score-picker
"""


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory, tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    config = Path(tmp_path_factory.mktemp("cfg")) / "latency.yaml"
    config.write_text(CONFIG)
    # STREAMED response bodies: the EPP sees the response headers (TTFT) and the usage (TPOT).
    return stack_factory(pods=2, time_scale=0.2, kv_events=False, epp_config=config,
                         response_body_mode="STREAMED")


def _metric(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not labels or labels in line):
            match = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
            if match:
                total += float(match.group(2))
    return total


async def _send(client: httpx.AsyncClient, stack: LocalStack, i: int, headers: dict[str, str]) -> int:
    # No stream_options: the stack's EPP asks the pods for the usage itself (TPOT needs it).
    body = {"model": MODEL, "prompt": f"request {i} " + "lorem ipsum dolor " * (20 + 10 * (i % 7)),
            "max_tokens": 8, "stream": True}
    async with client.stream("POST", f"{stack.url}/v1/completions", json=body, headers=headers) as r:
        async for _ in r.aiter_bytes():
            pass
        return r.status_code


async def test_slo_metrics_move_through_envoy(stack: LocalStack) -> None:
    metrics_url = f"http://127.0.0.1:{stack.epps[0].metrics_port}/metrics"
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        before = (await client.get(metrics_url)).text
        assert _metric(before, "epp_latency_model_trained") == 0.0
        # A 1 ms TTFT target no pod meets: every such request is a TTFT SLO violation.
        tight = {"x-llm-d-slo-ttft-ms": "1", "x-slo-tpot-ms": "10000"}
        for batch in range(4):
            statuses = await asyncio.gather(*(_send(client, stack, batch * 6 + j, tight) for j in range(6)))
            assert statuses == [200] * 6
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            text = (await client.get(metrics_url)).text
            if _metric(text, "epp_latency_model_trained") == 1.0:
                break
            await asyncio.sleep(0.1)
        assert _metric(text, "epp_latency_model_trained") == 1.0, "the predictor never trained"
        # Once trained, decisions are predicted: more requests move the predicted histograms.
        for batch in range(2):
            statuses = await asyncio.gather(*(_send(client, stack, 100 + batch * 4 + j, tight) for j in range(4)))
            assert statuses == [200] * 4
        await asyncio.sleep(0.3)
        text = (await client.get(metrics_url)).text
    observed = _metric(text, "inference_objective_request_ttft_seconds_count")
    assert observed >= 32, observed
    assert _metric(text, "inference_objective_request_tpot_seconds_count") >= 32
    assert _metric(text, "inference_objective_request_slo_violation_total", 'type="ttft"') >= 32
    assert _metric(text, "inference_objective_request_slo_violation_total", 'type="tpot"') == 0
    assert _metric(text, "inference_objective_request_predicted_ttft_seconds_count") >= 8
    assert _metric(text, "inference_objective_request_ttft_prediction_duration_seconds_count") >= 8
    assert _metric(text, "epp_latency_prediction_error_ratio_count", 'type="ttft"') >= 8
    assert _metric(text, "epp_latency_slo_requests_total", 'type="ttft"') >= 8
    assert _metric(text, "epp_latency_model_samples", 'type="ttft"') >= 32
    assert "epp_latency_training_lag_seconds" in text
    # 40 requests over 2 pods: a pod with 8 of them has its speed against the pooled model (the
    # fallback scorers usually spread them over both; the step time needs back-to-back engine
    # steps, which these spaced batches seldom give).
    speeds = re.findall(r'^epp_latency_pod_speed_ratio\{pod="([^"]+)",type="ttft"\} (\S+)$', text, re.M)
    assert 1 <= len(speeds) <= 2, speeds
    assert all(0.1 <= float(value) <= 10.0 for _, value in speeds), speeds


async def test_bad_slo_header_is_a_400_with_an_openai_error(stack: LocalStack) -> None:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        # The predictor is trained by the test above only when run in order; either way a
        # malformed header is refused before any routing.
        r = await client.post(f"{stack.url}/v1/completions",
                              json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
                              headers={"x-llm-d-slo-ttft-ms": "soon"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_slo_header"


async def test_the_ttft_learnt_is_the_first_token_not_the_headers(stack: LocalStack) -> None:
    """The simulator sends a stream's headers before its prefill, as vLLM does
    (tests/unit/sim/test_sim_stream_headers.py): through the real Envoy, the TTFT the EPP
    observes must be the first token's, as the client sees it, not the headers'."""
    metrics_url = f"http://127.0.0.1:{stack.epps[0].metrics_port}/metrics"
    name = "inference_objective_request_ttft_seconds"
    headers_s: list[float] = []
    first_s: list[float] = []
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        before = (await client.get(metrics_url)).text
        for i in range(6):  # one at a time: no queue, so the prefill is the TTFT
            # ~5k new tokens each (distinct first words: no prefix hit): a prefill of ~55 ms at
            # the stack's time scale.
            body = {"model": MODEL, "prompt": f"{i} apples " + "lorem ipsum dolor sit amet " * 1000,
                    "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}
            start = time.perf_counter()
            async with client.stream("POST", f"{stack.url}/v1/completions", json=body,
                                     headers={"x-slo-ttft-ms": "10000"}) as r:
                headers_s.append(time.perf_counter() - start)
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and len(first_s) < len(headers_s):
                        first_s.append(time.perf_counter() - start)
        await asyncio.sleep(0.3)
        after = (await client.get(metrics_url)).text
    count = _metric(after, name + "_count") - _metric(before, name + "_count")
    learnt = (_metric(after, name + "_sum") - _metric(before, name + "_sum")) / max(count, 1)
    client_ttft = sorted(first_s)[len(first_s) // 2]
    client_headers = sorted(headers_s)[len(headers_s) // 2]
    assert count == 6, count
    # The headers come well before the first token; the EPP learns the first token's time
    # (from its routing answer, so a little less than the client's).
    assert client_headers < client_ttft / 3, (headers_s, first_s)
    assert 0.6 * client_ttft <= learnt <= 1.1 * client_ttft, (learnt, first_s)


async def _first_token(client: httpx.AsyncClient, stack: LocalStack, prompt: str) -> tuple[str, float]:
    """(the pod that served it, when its first token came: time.monotonic())."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2, "stream": True}
    async with client.stream("POST", f"{stack.url}/v1/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                return r.headers["x-sim-pod"], time.monotonic()
    raise AssertionError("no token")


async def test_a_request_behind_a_long_prefill_waits_for_its_first_token(stack: LocalStack) -> None:
    """Deferral (deferBehindPrefillTokens 4096 here): with a ~6k-token prompt prefilling on each
    pod, a chat is held in the EPP until the prompt on its pod has its first token, rather
    than prefilled in that prompt's last step."""
    metrics_url = f"http://127.0.0.1:{stack.epps[0].metrics_port}/metrics"
    name = "epp_latency_deferral_seconds"
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        deadline = time.monotonic() + 30
        i = 0
        while _metric((await client.get(metrics_url)).text, "epp_latency_model_trained") != 1.0:
            assert time.monotonic() < deadline, "the predictor never trained"
            await asyncio.gather(*(_send(client, stack, 200 + i + j, {"x-slo-ttft-ms": "5000"}) for j in range(4)))
            i += 4
        before = (await client.get(metrics_url)).text
        longs = [asyncio.create_task(_first_token(client, stack, f"{w} zebra " + "lorem ipsum dolor sit amet " * 1200))
                 for w in ("one", "two")]
        await asyncio.sleep(0.01)  # both are prefilling, one on each pod
        sent = time.monotonic()
        chat_pod, chat_first = await _first_token(client, stack, "a short question")
        firsts = dict(await asyncio.gather(*longs))
        await asyncio.sleep(0.2)
        after = (await client.get(metrics_url)).text
    assert len(firsts) == 2, firsts  # one long prompt on each pod
    held = _metric(after, name + "_count") - _metric(before, name + "_count")
    held_s = _metric(after, name + "_sum") - _metric(before, name + "_sum")
    assert held == 1, (held, firsts, chat_pod)
    # Sent when the prompt ahead of it had its first token, and its own came after.
    assert chat_first >= firsts[chat_pod] and 0.0 < held_s <= firsts[chat_pod] - sent + 0.05, (held_s, firsts)
