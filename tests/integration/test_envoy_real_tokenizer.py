"""`make run PRECISE=1` with the real Llama-3.1 tokenizer (--tokenizer DIR --precise): real Envoy, the EPP
routing with the precise prefix scorer, and simulated pods, all tokenizing with the same
model files. The EPP re-hashes the pods' published blocks and must find them all equal."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from epp.localstack.stack import LocalStack
from tests.helpers.tokenizer_fixture import llama3_dir
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory) -> LocalStack:
    return stack_factory(pods=3, time_scale=0.05, tokenizer=llama3_dir(), precise=True)


def _hash_checks(stack: LocalStack) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics", timeout=5).text
    return {s.labels["result"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "epp_kvevents_hash_checks" for s in f.samples if s.name.endswith("_total")}


def test_chat_follows_its_cached_prefix_with_real_block_hashes(stack: LocalStack) -> None:
    config = yaml.safe_load((stack.cfg.run_dir / "epp-config-precise.yaml").read_text())
    (precise,) = [p for p in config["plugins"] if p["type"] == "precise-prefix-cache-scorer"]
    assert precise["parameters"]["tokenizer"] == llama3_dir()

    system = {"role": "system", "content": "You answer questions about the ACME return policy. " * 30}
    with httpx.Client(timeout=30) as client:
        def chat(question: str) -> httpx.Response:
            r = client.post(f"{stack.url}/v1/chat/completions", json={
                "model": MODEL, "max_tokens": 2, "messages": [system, {"role": "user", "content": question}]})
            assert r.status_code == 200, r.text
            return r

        first = chat("Can I return shoes?").headers["x-sim-pod"]
        deadline = time.monotonic() + 20
        while _hash_checks(stack).get("stored_match", 0) == 0:  # the first request's KV events
            assert time.monotonic() < deadline, "the EPP never confirmed a published block hash"
            time.sleep(0.2)
        follow_ups = [chat(f"And question {i}?") for i in range(4)]
    assert {r.headers["x-sim-pod"] for r in follow_ups} == {first}
    cached = [int(r.headers["x-sim-cached-tokens"]) for r in follow_ups]
    assert all(c >= 16 * 15 for c in cached), cached  # the ~300-token system prompt, block-aligned
    checks = _hash_checks(stack)
    assert checks["stored_match"] > 0 and checks.get("stored_mismatch", 0) == 0, checks
