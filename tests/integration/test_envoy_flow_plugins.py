"""llm-d-router's program-aware-fairness through the real Envoy, EPP and simulated pod: the
program (fairness ID) that has attained less service is served first although the other one's
request waited longer, and the attained service the EPP exports is the response's own usage,
1 x prompt_tokens + 2 x completion_tokens (upstream strategy_las.go), read from Envoy's
streamed response bodies."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import StackFactory
from tests.integration.test_envoy_flow_control import body, metric, until

pytestmark = pytest.mark.integration

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: concurrency-detector
  parameters: {maxConcurrency: 1}
- type: program-aware-fairness
- type: queue-scorer
- type: max-score-picker
flowControl:
  defaultRequestTTL: 30s
  defaultPriorityBand: {fairnessPolicyRef: program-aware-fairness}
"""


# llm-d's current name, and GIE's, which llm-d keeps as a deprecated alias (epp/headers.py).
@pytest.mark.parametrize("fairness_header", ["x-llm-d-inference-fairness-id", "x-gateway-inference-fairness-id"])
def test_program_aware_fairness_serves_the_least_served_program_first(stack_factory: StackFactory,
                                                                      tmp_path: Path, fairness_header: str) -> None:
    path = tmp_path / "epp-config.yaml"
    path.write_text(CONFIG)
    # The EPP reads each response's usage from the bodies Envoy streams to it.
    stack = stack_factory(pods=1, time_scale=0.5, kv_events=False, epp_config=path,
                          envoy_message_timeout_ms=60_000, response_body_mode="STREAMED")

    async def post(client: httpx.AsyncClient, program: str, max_tokens: int) -> tuple[httpx.Response, float]:
        r = await client.post(f"{stack.url}/v1/completions", json=body(max_tokens), headers={fairness_header: program})
        return r, time.monotonic()

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            served = "llm_d_epp_program_aware_attained_service_tokens"
            # 1. The "heavy" program is served once: its attained service is that response's usage.
            r, _ = await post(client, "heavy", 60)
            assert r.status_code == 200, r.text
            usage = r.json()["usage"]
            expected = usage["prompt_tokens"] + 2 * usage["completion_tokens"]
            assert usage["completion_tokens"] == 60
            await until(lambda: _eq(metric(client, stack, served, program_id="heavy"), float(expected)))
            # 2. A third program holds the only slot; heavy queues first, light 300 ms later.
            busy = asyncio.create_task(post(client, "filler", 300))
            size = "inference_extension_flow_control_queue_size"
            await until(lambda: metric(client, stack, "inference_extension_flow_control_requests_total",
                                       outcome="Dispatched", priority="0"))
            heavy = asyncio.create_task(post(client, "heavy", 1))
            await until(lambda: _eq(metric(client, stack, size, fairness_id="heavy"), 1.0))
            await asyncio.sleep(0.3)
            light = asyncio.create_task(post(client, "light", 1))
            await until(lambda: _eq(metric(client, stack, size, fairness_id="light"), 1.0))
            (r_busy, t_busy), (r_heavy, t_heavy), (r_light, t_light) = await busy, await heavy, await light
            assert [r_busy.status_code, r_heavy.status_code, r_light.status_code] == [200, 200, 200]
            # Least attained service first (weights 0.8 service / 0.2 head wait): light (0 tokens)
            # before heavy (~60 ms of decay on >120 tokens), although heavy's request waited longer.
            # First come, first served (the default global-strict policy) would do the opposite.
            assert t_busy <= t_light < t_heavy
            assert await metric(client, stack, "llm_d_epp_program_aware_avg_wait_time_milliseconds",
                                program_id="light") >= 1.0
    asyncio.run(scenario())


async def _eq(value: object, expected: float) -> bool:
    return await value == expected  # type: ignore[misc]
