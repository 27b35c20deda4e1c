"""API keys and per-tenant limits through the real Envoy: 401 for a missing or wrong key
(the same answer for both), 200 for a good one, 429 + Retry-After past the tenant's
requests-per-minute or tokens-per-minute."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from epp.flowcontrol.tenants import hash_key
from epp.localstack.stack import LocalStack
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 2}


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory, tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    keys = Path(tmp_path_factory.mktemp("keys")) / "keys.yaml"
    keys.write_text(f"""
tenants:
- name: team-a
  keys: ["{hash_key('sk-team-a')}"]
- name: team-b
  objective: batch-sheddable
  requestsPerMinute: 2
  keys: [sk-team-b]
- name: team-t
  tokensPerMinute: 100
  keys: [sk-team-t]
""")
    # Response bodies pass through the EPP: token estimates are corrected from their usage.
    return stack_factory(pods=1, time_scale=0.1, kv_events=False, epp_args=["--api-keys", str(keys)],
                         response_body_mode="BUFFERED")


def test_missing_or_wrong_key_gets_the_same_401(stack: LocalStack) -> None:
    url = f"{stack.url}/v1/completions"
    missing = httpx.post(url, json=BODY, timeout=30)
    wrong = httpx.post(url, json=BODY, headers={"authorization": "Bearer sk-team-c"}, timeout=30)
    hashed = httpx.post(url, json=BODY, headers={"authorization": f"Bearer {hash_key('sk-team-a')}"}, timeout=30)
    for r in (missing, wrong, hashed):
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.json()["error"]["type"] == "AuthenticationError"
    assert missing.content == wrong.content == hashed.content
    models = httpx.get(f"{stack.url}/v1/models", timeout=30)  # bodyless requests too
    assert models.status_code == 401
    ok = httpx.post(url, json=BODY, headers={"authorization": "Bearer sk-team-a"}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert httpx.get(f"{stack.url}/v1/models", headers={"x-api-key": "sk-team-a"}, timeout=30).status_code == 200


def test_requests_per_minute_limit_is_429_with_retry_after(stack: LocalStack) -> None:
    url = f"{stack.url}/v1/completions"
    hdr = {"authorization": "Bearer sk-team-b"}
    assert [httpx.post(url, json=BODY, headers=hdr, timeout=30).status_code for _ in range(2)] == [200, 200]
    r = httpx.post(url, json=BODY, headers=hdr, timeout=30)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limit_requests_per_minute"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # The other tenant is unaffected.
    assert httpx.post(url, json=BODY, headers={"x-api-key": "sk-team-a"}, timeout=30).status_code == 200
    text = httpx.get(f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics", timeout=10).text
    assert 'epp_tenant_requests_total{outcome="admitted",tenant="team-b"} 2.0' in text
    assert 'epp_tenant_requests_total{outcome="rate_limit_requests_per_minute",tenant="team-b"} 1.0' in text


def test_tokens_per_minute_limit(stack: LocalStack) -> None:
    url = f"{stack.url}/v1/completions"
    hdr = {"x-api-key": "sk-team-t"}
    # Estimate per request: len("hello") // 4 + max_tokens = 1 + 40 = 41 tokens; 2 fit in 100.
    body = {**BODY, "max_tokens": 40}
    ok = [httpx.post(url, json=body, headers=hdr, timeout=30) for _ in range(2)]
    assert [r.status_code for r in ok] == [200, 200]
    r = httpx.post(url, json=body, headers=hdr, timeout=30)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limit_tokens_per_minute"
    # The usage the pod reported replaces the estimates (corrections apply to the window too).
    actual = sum(r.json()["usage"]["prompt_tokens"] + r.json()["usage"]["completion_tokens"] for r in ok)
    assert 1 <= int(r.headers["retry-after"]) <= 60
    text = httpx.get(f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics", timeout=10).text
    assert 'epp_tenant_tokens_total{kind="estimated",tenant="team-t"} 82.0' in text
    assert f'epp_tenant_tokens_total{{kind="actual",tenant="team-t"}} {float(actual)}' in text
