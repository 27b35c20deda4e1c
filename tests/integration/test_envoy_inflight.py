"""The in-flight ledger through the real Envoy: a request counts against its pod from the
moment it is dispatched until its response ends, and no longer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from epp.localstack.stack import LocalStack
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# Only the ledger decides: no scraped signal, no prefix affinity.
ACTIVE_ONLY = """apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: active-request-scorer
- type: max-score-picker
"""


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory, tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    config = Path(tmp_path_factory.mktemp("cfg")) / "active-only.yaml"
    config.write_text(ACTIVE_ONLY)
    return stack_factory(pods=2, time_scale=0.2, kv_events=False, epp_config=config)


async def _send(client: httpx.AsyncClient, stack: LocalStack, tag: str, max_tokens: int) -> str:
    r = await client.post(f"{stack.url}/v1/completions",
                          json={"model": MODEL, "prompt": f"{tag} " + "lorem ipsum " * 50, "max_tokens": max_tokens})
    assert r.status_code == 200, r.text
    return r.headers["x-sim-pod"]


async def test_completed_request_is_released_and_a_running_one_still_counts(stack: LocalStack) -> None:
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        for trial in range(3):
            # A long and a short request at once: the ledger puts them on different pods.
            long_task = asyncio.create_task(_send(client, stack, f"long {trial}", 400))
            await asyncio.sleep(0.05)
            short_pod = await _send(client, stack, f"short {trial}", 1)
            assert not long_task.done(), "the long request should still be decoding"
            # The short request's charge is gone, the long one's is held: the next request
            # goes to the short request's pod every time (a leak would make it a coin toss).
            next_pod = await _send(client, stack, f"next {trial}", 1)
            assert next_pod == short_pod, (trial, short_pod, next_pod)
            long_pod = await long_task
            assert long_pod != short_pod
