"""The exact-response cache through the real Envoy, the EPP and simulated pods: hit and miss
for streaming and non-streaming requests, tenant isolation, `cache-control: no-store`, the
ext_proc messages each kind of request costs (Envoy's own counters: no response body unless a
cacheable miss), a stream cut by a dying pod never stored, and Redis (the real redis-server)
killed in the middle of a run with every request still answered. Fails (never skips) when
redis-server is missing."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from epp.localstack.stack import LocalStack
from tests.helpers.procs import free_port, running, wait_port
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
KEY_A, KEY_B = "sk-cache-a", "sk-cache-b"
CACHE_CONFIG = """
apiVersion: epp.llm-d.ai/v1alpha1
kind: ResponseCacheConfig
storage: {timeoutMs: 100, retryAfterMs: 300}
rules:
- {model: "*", ttlSeconds: 60}
"""


def _write_files(tmp: Path) -> tuple[Path, Path]:
    keys = tmp / "keys.yaml"
    keys.write_text(f"tenants:\n- {{name: team-a, keys: [{KEY_A}]}}\n- {{name: team-b, keys: [{KEY_B}]}}\n")
    cache = tmp / "cache.yaml"
    cache.write_text(CACHE_CONFIG)
    return keys, cache


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory, tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    keys, cache = _write_files(Path(tmp_path_factory.mktemp("cache")))
    return stack_factory(pods=2, time_scale=0.05, kv_events=False, response_cache=True,
                         epp_args=["--api-keys", str(keys), "--response-cache", str(cache)])


def _body(question: str, *, stream: bool = False, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": question}],
                            "max_tokens": max_tokens, "temperature": 0, "stream": stream, **extra}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _post(client: httpx.Client, url: str, body: dict[str, Any], key: str = KEY_A,
          **headers: str) -> httpx.Response:
    return client.post(f"{url}/v1/chat/completions", json=body,
                       headers={"authorization": f"Bearer {key}", **headers})


def _metric(stack: LocalStack, name: str, labels: str = "") -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.cfg.metrics_port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not labels or labels in line) and not line.startswith("#"):
            m = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)", line)
            if m:
                total += float(m.group(2))
    return total


def _fills(stack: LocalStack) -> float:
    return _metric(stack, "epp_response_cache_fills_total")


def _wait_fills(stack: LocalStack, at_least: float) -> None:
    """Fills are stored in the background right after the last chunk: wait for the count."""
    for _ in range(100):
        if _fills(stack) >= at_least:
            return
        asyncio.run(asyncio.sleep(0.02))
    raise AssertionError(f"fills stayed below {at_least}: {_fills(stack)}")


def _sse_events(text: str) -> list[str]:
    return [line[5:].strip() for line in text.split("\n") if line.startswith("data:")]


def _stream_text(events: list[str]) -> str:
    out = []
    for data in events[:-1]:
        for choice in json.loads(data).get("choices", []):
            out.append(choice.get("delta", {}).get("content") or "")
    return "".join(out)


def test_non_streaming_miss_then_hit(stack: LocalStack) -> None:
    with httpx.Client(timeout=30) as client:
        fills = _fills(stack)
        first = _post(client, stack.url, _body("What are your opening hours?"))
        assert first.status_code == 200, first.text
        assert first.headers.get("x-epp-cache") == "miss"
        _wait_fills(stack, fills + 1)
        hit = _post(client, stack.url, _body("What are your opening hours?"))
    assert hit.status_code == 200 and hit.headers["x-epp-cache"] == "hit"
    assert hit.headers["content-type"].startswith("application/json")
    original, cached = first.json(), hit.json()
    assert cached["choices"] == original["choices"]
    usage = cached["usage"]
    assert usage["prompt_tokens"] == original["usage"]["prompt_tokens"] > 0
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"]
    assert "x-sim-pod" not in hit.headers  # no pod saw it


def test_streaming_miss_then_hit_is_well_formed_sse(stack: LocalStack) -> None:
    body = _body("How do I reset my password?", stream=True, max_tokens=12)
    with httpx.Client(timeout=30) as client:
        fills = _fills(stack)
        first = _post(client, stack.url, body)
        assert first.status_code == 200 and first.headers.get("x-epp-cache") == "miss"
        _wait_fills(stack, fills + 1)
        hit = _post(client, stack.url, body)
    assert hit.status_code == 200 and hit.headers["x-epp-cache"] == "hit"
    assert hit.headers["content-type"].startswith("text/event-stream")
    assert hit.text.endswith("data: [DONE]\n\n")
    original, replay = _sse_events(first.text), _sse_events(hit.text)
    assert replay[-1] == "[DONE]" and all(json.loads(e) for e in replay[:-1])
    assert _stream_text(replay) == _stream_text(original) != ""
    usage = next(json.loads(e)["usage"] for e in replay[:-1] if json.loads(e).get("usage"))
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] > 0
    # The streaming and the non-streaming form of one question are separate entries.
    with httpx.Client(timeout=30) as client:
        other = _post(client, stack.url, _body("How do I reset my password?", max_tokens=12))
    assert other.status_code == 200 and other.headers.get("x-epp-cache") == "miss"


def test_tenants_never_read_each_others_entries(stack: LocalStack) -> None:
    body = _body("Where is my invoice?")
    with httpx.Client(timeout=30) as client:
        fills = _fills(stack)
        a = _post(client, stack.url, body, KEY_A)
        _wait_fills(stack, fills + 1)
        assert _post(client, stack.url, body, KEY_A).headers.get("x-epp-cache") == "hit"
        # B, even naming A's fairness ID (the EPP replaces it with B's tenant), misses...
        b = _post(client, stack.url, body, KEY_B, **{"x-gateway-inference-fairness-id": "team-a"})
        assert b.status_code == 200 and b.headers.get("x-epp-cache") == "miss"
        _wait_fills(stack, fills + 2)
        # ...and fills an entry of its own, which B then reads.
        again = _post(client, stack.url, body, KEY_B)
        assert again.headers.get("x-epp-cache") == "hit" and again.json()["choices"] == b.json()["choices"]
    assert a.status_code == 200


def test_no_store_and_no_cache_are_honoured(stack: LocalStack) -> None:
    body = _body("Can I change my plan?")
    with httpx.Client(timeout=30) as client:
        skipped = _metric(stack, "epp_response_cache_skipped_total", 'reason="no_store"')
        for _ in range(2):
            r = _post(client, stack.url, body, **{"cache-control": "no-store"})
            assert r.status_code == 200 and "x-epp-cache" not in r.headers
        assert _metric(stack, "epp_response_cache_skipped_total", 'reason="no_store"') == skipped + 2
        # Nothing was stored: the same request without the header is a miss.
        fills = _fills(stack)
        assert _post(client, stack.url, body).headers.get("x-epp-cache") == "miss"
        _wait_fills(stack, fills + 1)
        assert _post(client, stack.url, body).headers.get("x-epp-cache") == "hit"
        # no-cache skips the lookup (the pods answer) and stores the fresh answer.
        fresh = _post(client, stack.url, body, **{"cache-control": "no-cache"})
        assert fresh.status_code == 200 and fresh.headers.get("x-epp-cache") == "miss"


def test_cache_control_max_age_opts_a_sampled_request_in(stack: LocalStack) -> None:
    body = _body("Write a slogan for our shop", temperature=0.9)
    with httpx.Client(timeout=30) as client:
        assert "x-epp-cache" not in _post(client, stack.url, body).headers  # sampled: not cacheable
        fills = _fills(stack)
        first = _post(client, stack.url, body, **{"cache-control": "max-age=60"})
        assert first.status_code == 200 and first.headers.get("x-epp-cache") == "miss"
        _wait_fills(stack, fills + 1)
        hit = _post(client, stack.url, body, **{"cache-control": "max-age=60"})
    assert hit.headers.get("x-epp-cache") == "hit" and hit.json()["choices"] == first.json()["choices"]


def test_ext_proc_messages_per_kind_of_request(stack: LocalStack) -> None:
    """Envoy's ext_proc counters. At request-header time the EPP cannot know the temperature
    yet, so an inference call a rule could match asks for its response headers (one message,
    never the body); `no-store` calls and other routes keep the configured mode exactly; only a
    cacheable miss sends its response body to the EPP."""
    def sent() -> int:
        stats = httpx.get(f"http://127.0.0.1:{stack.cfg.admin_port}/stats?filter=ext_proc.stream_msgs_sent",
                          timeout=5).text
        return sum(int(line.rsplit(":", 1)[1]) for line in stats.splitlines() if "stream_msgs_sent" in line)

    with httpx.Client(timeout=30) as client:
        before = sent()
        r = _post(client, stack.url, _body("Tell me a story", temperature=0.8))
        assert r.status_code == 200 and "x-epp-cache" not in r.headers
        sampled = sent() - before
        before = sent()
        r = _post(client, stack.url, _body("Tell me a story"), **{"cache-control": "no-store"})
        assert r.status_code == 200 and "x-epp-cache" not in r.headers
        no_store = sent() - before
        before = sent()
        r = client.get(f"{stack.url}/v1/models", headers={"authorization": f"Bearer {KEY_A}"})
        assert r.status_code == 200
        bodyless = sent() - before
        before = sent()
        assert _post(client, stack.url, _body("A cacheable question?")).status_code == 200
        cacheable = sent() - before
    assert sampled == 3, sampled  # request headers + request body + response headers, no body
    assert no_store == 2, no_store  # request headers + request body: the configured mode
    assert bodyless == 1, bodyless
    assert cacheable >= 4, cacheable  # + response headers + response body


def test_cut_stream_is_never_stored(stack_factory: StackFactory, tmp_path: Path) -> None:
    keys, cache = _write_files(tmp_path)
    stack = stack_factory(pods=1, time_scale=1.0, kv_events=False, response_cache=True,
                          epp_args=["--api-keys", str(keys), "--response-cache", str(cache)])
    body = _body("Explain the refund policy in detail.", stream=True, max_tokens=400)
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{stack.url}/v1/chat/completions", json=body,
                           headers={"authorization": f"Bearer {KEY_A}"}) as r:
            assert r.status_code == 200
            got = b""
            with pytest.raises(httpx.HTTPError):  # the stream is cut when the pod dies
                for chunk in r.iter_bytes():
                    got += chunk
                    if got.count(b"data:") >= 3:
                        stack.kill(stack.pods[0].name)
        assert b"[DONE]" not in got
    for _ in range(100):
        if _metric(stack, "epp_response_cache_skipped_total", 'reason="incomplete"') >= 1:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert _metric(stack, "epp_response_cache_skipped_total", 'reason="incomplete"') == 1
    assert _fills(stack) == 0


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[tuple[list[str], Path, int]]:
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is required: apt-get install -y redis-server"
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(tmp_path)]
    yield args, tmp_path / "redis.log", port


def test_redis_killed_mid_run_loses_nothing(stack_factory: StackFactory, tmp_path: Path,
                                           redis_server: tuple[list[str], Path, int]) -> None:
    args, log, port = redis_server
    keys, cache = _write_files(tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    with running(args, log) as redis:
        wait_port(port)
        stack = stack_factory(pods=2, time_scale=0.05, kv_events=False, response_cache=True,
                              epp_args=["--api-keys", str(keys), "--response-cache", str(cache),
                                        "--response-cache-redis", url])
        questions = [f"FAQ question number {i}?" for i in range(6)]

        async def wave() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                calls = [client.post(f"{stack.url}/v1/chat/completions",
                                     json=_body(q, stream=i % 2 == 1),
                                     headers={"authorization": f"Bearer {KEY_A}"})
                         for i, q in enumerate(questions * 3)]
                return list(await asyncio.gather(*calls))

        first = asyncio.run(wave())
        assert all(r.status_code == 200 for r in first)
        _wait_fills(stack, 1)
        warm = asyncio.run(wave())
        assert all(r.status_code == 200 for r in warm)
        assert sum(r.headers.get("x-epp-cache") == "hit" for r in warm) >= len(questions)
        redis.popen.send_signal(signal.SIGKILL)
        redis.popen.wait(5)
        down = asyncio.run(wave()) + asyncio.run(wave())
    # Every request was answered by the pods, completely, while Redis was gone.
    assert [r.status_code for r in down] == [200] * len(down)
    assert all(r.headers.get("x-epp-cache") == "miss" for r in down)  # looked up, failed: a miss
    for r in down:
        if r.headers["content-type"].startswith("text/event-stream"):
            assert r.text.endswith("data: [DONE]\n\n")
        else:
            assert r.json()["choices"]
    assert _metric(stack, "epp_response_cache_redis_errors_total") >= 1
    # Redis back (empty: it kept nothing on disk): the cache fills and hits again.
    with running(args, log):
        wait_port(port)
        asyncio.run(asyncio.sleep(0.4))  # past retryAfterMs
        fills = _fills(stack)
        with httpx.Client(timeout=30) as client:
            assert _post(client, stack.url, _body("After the outage?")).status_code == 200
            _wait_fills(stack, fills + 1)
            assert _post(client, stack.url, _body("After the outage?")).headers.get("x-epp-cache") == "hit"
