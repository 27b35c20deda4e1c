"""The OpenAI-compatible surface, checked with the real `openai` client where it applies."""

import asyncio

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.sim.cluster import simulated_pods
from epp.sim.metrics import ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


async def test_openai_client_completions_and_chat_stream_and_not() -> None:
    async with simulated_pods(1, time_scale=0.01) as cluster:
        client = openai.AsyncOpenAI(base_url=cluster.urls[0] + "/v1", api_key="unused", max_retries=0)
        full = await client.completions.create(model=MODEL, prompt="Tell me a story", max_tokens=6)
        assert full.choices[0].finish_reason == "length" and full.usage is not None
        assert full.usage.completion_tokens == 6

        stream = await client.completions.create(
            model=MODEL,
            prompt="Tell me a story",
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 6
        # the identical prompt now hits the prefix cache (its one full block)
        assert chunks[-1].usage.prompt_tokens_details is not None

        chat = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            max_tokens=4,
        )
        assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
        chat_stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_completion_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts = [c async for c in chat_stream]
        assert parts[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
        assert text == chat.choices[0].message.content
        assert parts[-1].usage is not None and parts[-1].usage.completion_tokens == 4

        models = await client.models.list()
        assert [m.id for m in models.data] == [MODEL]


async def test_error_shapes() -> None:
    async with simulated_pods(1, time_scale=0.01, max_model_len=64) as cluster:
        url = cluster.urls[0]
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            await client.completions.create(model="nope", prompt="x", max_tokens=1)
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            await client.completions.create(model=MODEL, prompt="word " * 100, max_tokens=10)
        async with httpx.AsyncClient() as http:
            r = await http.post(url + "/v1/completions", content=b"{not json", headers={"x-request-id": "r-1"})
            assert r.status_code == 400
            assert r.json()["error"]["type"] == "BadRequestError" and r.json()["error"]["code"] == 400
            assert r.headers["x-request-id"] == "r-1" and r.headers["x-sim-pod"] == cluster[0].name
            r = await http.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": []})
            assert r.status_code == 400


async def test_tokenize_detokenize_version_health() -> None:
    async with simulated_pods(1) as cluster, httpx.AsyncClient() as http:
        url = cluster.urls[0]
        r = (await http.post(url + "/tokenize", json={"prompt": "Hello there, world"})).json()
        assert r["count"] == len(r["tokens"]) > 0
        assert (await http.post(url + "/detokenize", json={"tokens": r["tokens"]})).json()[
            "prompt"
        ] == "Hello there, world"
        chat = (await http.post(url + "/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})).json()
        assert chat["count"] > r["count"] - 10
        assert "version" in (await http.get(url + "/version")).json()
        assert (await http.get(url + "/health")).status_code == 200


async def test_metric_names_types_labels_and_buckets() -> None:
    pods = simulated_pods(1, time_scale=0.01, lora_modules={"ad": "/p"}, max_loras=2)
    async with pods as cluster, httpx.AsyncClient() as http:
        body = {"prompt": "metrics please", "max_tokens": 3}
        await http.post(cluster.urls[0] + "/v1/completions", json=body)
        text = (await http.get(cluster.urls[0] + "/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    expected = {
        "vllm:num_requests_running": "gauge",
        "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:gpu_cache_usage_perc": "gauge",
        "vllm:lora_requests_info": "gauge",
        "vllm:cache_config_info": "gauge",
        "vllm:prefix_cache_queries": "counter",
        "vllm:prefix_cache_hits": "counter",
        "vllm:prompt_tokens": "counter",
        "vllm:generation_tokens": "counter",
        "vllm:request_success": "counter",
        "vllm:num_preemptions": "counter",
        "vllm:time_to_first_token_seconds": "histogram",
        "vllm:inter_token_latency_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name
    running = families["vllm:num_requests_running"].samples[0]
    assert running.labels == {"model_name": MODEL, "engine": "0"}
    success = {
        s.labels["finished_reason"]: s.value
        for s in families["vllm:request_success"].samples
        if s.name.endswith("_total")
    }
    assert success["length"] == 1.0
    assert families["vllm:generation_tokens"].samples[0].value == 3.0
    info = families["vllm:cache_config_info"].samples[0]
    assert info.value == 1.0 and info.labels["block_size"] == "16" and info.labels["num_gpu_blocks"] == "24000"
    lora = families["vllm:lora_requests_info"].samples[-1]
    assert lora.labels["max_lora"] == "2" and lora.value > 1e9  # a timestamp, as vLLM sets it

    def buckets(name: str) -> list[float]:
        return [float(s.labels["le"]) for s in families[name].samples if s.name.endswith("_bucket")][:-1]

    assert buckets("vllm:time_to_first_token_seconds") == TTFT_BUCKETS
    assert buckets("vllm:inter_token_latency_seconds") == ITL_BUCKETS
    assert buckets("vllm:e2e_request_latency_seconds") == REQUEST_LATENCY_BUCKETS


async def test_faults_flip_at_run_time() -> None:
    async with simulated_pods(1, time_scale=0.01) as cluster, httpx.AsyncClient(timeout=10) as http:
        url = cluster.urls[0]
        body = {"prompt": "x", "max_tokens": 1}
        assert (await http.post(url + "/sim/faults", json={"error_rate": 1.0, "error_status": 503})).status_code == 200
        r = await http.post(url + "/v1/completions", json=body)
        assert r.status_code == 503 and r.json()["error"]["code"] == 503
        await http.post(url + "/sim/faults", json={"error_rate": 0.0})
        assert (await http.post(url + "/v1/completions", json=body)).status_code == 200

        await http.post(url + "/sim/faults", json={"metrics_error_rate": 1.0})
        assert (await http.get(url + "/metrics")).status_code == 500
        await http.post(url + "/sim/faults", json={"metrics_error_rate": 0.0, "metrics_garbage": True})
        with pytest.raises(ValueError):
            list(text_string_to_metric_families((await http.get(url + "/metrics")).text))
        await http.post(url + "/sim/faults", json={"metrics_garbage": False})

        await http.post(url + "/sim/faults", json={"startup_delay_s": 30})
        assert (await http.get(url + "/health")).status_code == 503
        await http.post(url + "/sim/faults", json={"startup_delay_s": 0})
        assert (await http.get(url + "/health")).status_code == 200

        await http.post(url + "/sim/faults", json={"hang_requests": True})
        hung = asyncio.create_task(http.post(url + "/v1/completions", json=body))
        await asyncio.sleep(0.1)
        assert not hung.done()
        await http.post(url + "/sim/faults", json={"hang_requests": False})
        assert (await hung).status_code == 200

        bad = await http.post(url + "/sim/faults", json={"no_such_fault": 1})
        assert bad.status_code == 400 and "unknown fault" in bad.json()["error"]["message"]


async def test_crash_refuses_connections_until_restart() -> None:
    async with (
        simulated_pods(1, time_scale=0.01, crash_after_requests=1) as cluster,
        httpx.AsyncClient() as http,
    ):
        pod = cluster[0]
        body = {"prompt": "x", "max_tokens": 1}
        assert (await http.post(pod.url + "/v1/completions", json=body)).status_code == 200
        assert (await http.post(pod.url + "/v1/completions", json=body)).status_code == 503
        for _ in range(100):
            if pod.crashed and pod._runner is None:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(httpx.ConnectError):
            await http.get(pod.url + "/health")
        pod.faults.crash_after_requests = 0
        await pod.restart()
        assert (await http.get(pod.url + "/health")).status_code == 200


async def test_client_disconnect_aborts_request() -> None:
    async with simulated_pods(1, time_scale=1.0) as cluster:
        pod = cluster[0]
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(pod.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2000}, timeout=0.2)
        for _ in range(200):
            if pod.engine.state()["running"] == 0:
                break
            await asyncio.sleep(0.01)
        assert pod.engine.state()["running"] == 0
        assert pod.engine.pool.usage() == 0.0
