"""Engine behaviour through the in-process Python API (real HTTP on loopback)."""

import asyncio
import json
import time

import httpx

from epp.sim.cluster import simulated_pods
from epp.tokenization.tokenizer import SimpleTokenizer

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LONG_PROMPT = "You are a meticulous assistant. Answer with care and cite the documents. " * 200  # ~3.7k tokens


async def _ttft(client: httpx.AsyncClient, url: str, prompt: str) -> tuple[float, str]:
    """Seconds until the first streamed token, and the cached tokens the stream's usage reports
    (vLLM's prompt_tokens_details.cached_tokens: a stream's headers go out before its prefill)."""
    start = time.perf_counter()
    body = {"prompt": prompt, "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    first = 0.0
    cached = ""
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert "x-sim-cached-tokens" not in r.headers
        async for line in r.aiter_lines():
            if line.startswith("data: {") and not first:
                first = time.perf_counter() - start
            if line.startswith("data: {") and '"usage":{' in line:
                cached = str(json.loads(line[6:])["usage"]["prompt_tokens_details"]["cached_tokens"])
        return first, cached


async def test_ttft_drops_for_repeated_prefix_on_same_pod_only() -> None:
    scale = 0.5
    async with simulated_pods(2, time_scale=scale) as cluster, httpx.AsyncClient(timeout=30) as client:
        n_tokens = len(SimpleTokenizer().encode(LONG_PROMPT))
        cold_floor = (6.5 + 0.055 * n_tokens) / 1000 * scale  # engine sleep for the cold prefill
        cold, cached_cold = await _ttft(client, cluster.urls[0], LONG_PROMPT)
        warm, cached_warm = await _ttft(client, cluster.urls[0], LONG_PROMPT)
        other, cached_other = await _ttft(client, cluster.urls[1], LONG_PROMPT)
        assert cached_cold == "0" and cached_other == "0"
        assert int(cached_warm) == (n_tokens - 1) // 16 * 16
        assert cold >= cold_floor and other >= cold_floor  # sleeps never end early
        assert warm < cold / 2
        assert cluster[0].engine.state()["prefix_cache_hit_tokens"] == int(cached_warm)
        assert cluster[1].engine.state()["prefix_cache_hit_tokens"] == 0


async def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_queue_builds_past_max_num_seqs() -> None:
    async with (
        simulated_pods(1, time_scale=0.2, max_num_seqs=2) as cluster,
        httpx.AsyncClient(timeout=30) as client,
    ):
        pod = cluster[0]
        # Long enough decodes that the first batch is still running when /metrics is read on a busy machine.
        body = {"prompt": "queue test", "max_tokens": 400}
        tasks = [asyncio.create_task(client.post(pod.url + "/v1/completions", json=body)) for _ in range(6)]
        # Admission into the running batch happens on the engine's next step, so wait for both counts.
        await _wait_for(lambda: pod.engine.state()["waiting"] >= 3 and pod.engine.state()["running"] == 2)
        metrics = (await client.get(pod.url + "/metrics")).text
        assert 'vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0' in metrics
        responses = await asyncio.gather(*tasks)
        assert all(r.status_code == 200 for r in responses)
        assert pod.engine.state()["waiting"] == 0


async def test_lora_requests_wait_when_max_loras_reached() -> None:
    async with (
        simulated_pods(1, time_scale=0.2, max_loras=1, lora_modules={"ad-a": "/a", "ad-b": "/b"}) as cluster,
        httpx.AsyncClient(timeout=30) as client,
    ):
        pod = cluster[0]
        a = asyncio.create_task(
            client.post(pod.url + "/v1/completions", json={"model": "ad-a", "prompt": "x", "max_tokens": 30})
        )
        await _wait_for(lambda: pod.engine.state()["running_loras"] == ["ad-a"])
        b = asyncio.create_task(
            client.post(pod.url + "/v1/completions", json={"model": "ad-b", "prompt": "y", "max_tokens": 3})
        )
        base = asyncio.create_task(client.post(pod.url + "/v1/completions", json={"prompt": "z", "max_tokens": 3}))
        await _wait_for(lambda: pod.engine.state()["waiting_loras"] == ["ad-b"])
        metrics = (await client.get(pod.url + "/metrics")).text
        assert (
            'vllm:lora_requests_info{max_lora="1",running_lora_adapters="ad-a",waiting_lora_adapters="ad-b"}' in metrics
        )
        # a base-model request is not blocked by the waiting adapter
        assert (await base).status_code == 200
        assert not b.done()
        results = await asyncio.gather(a, b)
        assert [r.json()["model"] for r in results] == ["ad-a", "ad-b"]


async def test_preemption_when_out_of_blocks_and_all_finish() -> None:
    async with (
        simulated_pods(1, time_scale=0.05, num_gpu_blocks=12, block_size=16, max_model_len=512) as cluster,
        httpx.AsyncClient(timeout=30) as client,
    ):
        pod = cluster[0]
        prompts = [f"request number {i} " * 12 for i in range(4)]  # ~50 tokens each, + 80 generated
        responses = await asyncio.gather(
            *[client.post(pod.url + "/v1/completions", json={"prompt": p, "max_tokens": 80}) for p in prompts]
        )
        assert [r.json()["usage"]["completion_tokens"] for r in responses] == [80] * 4
        assert pod.engine.state()["preemptions"] > 0
        assert "vllm:num_preemptions_total" in (await client.get(pod.url + "/metrics")).text


async def test_output_len_distribution_stops_early() -> None:
    async with simulated_pods(1, time_scale=0.01, output_len_dist="uniform:2:4") as cluster:
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(cluster.urls[0] + "/v1/completions", json={"prompt": "hi", "max_tokens": 50})
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert 2 <= r.json()["usage"]["completion_tokens"] <= 4


async def test_prefill_decode_disaggregation() -> None:
    async with (
        simulated_pods(2, time_scale=0.05, per_pod=[{"role": "prefill"}, {"role": "decode"}]) as cluster,
        httpx.AsyncClient(timeout=30) as client,
    ):
        prefill, decode = cluster[0], cluster[1]
        prompt = "Shared document for disaggregated serving. " * 40
        r = await client.post(
            prefill.url + "/v1/completions",
            json={
                "prompt": prompt,
                "max_tokens": 1,
                "stream": False,
                "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False},
            },
        )
        params = r.json()["kv_transfer_params"]
        assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
        assert params["remote_engine_id"] == prefill.name and params["remote_block_ids"]
        assert {"remote_host", "remote_port", "remote_request_id", "tp_size"} <= params.keys()
        r = await client.post(
            decode.url + "/v1/completions",
            json={
                "prompt": prompt,
                "max_tokens": 4,
                "kv_transfer_params": params,
            },
        )
        n_prompt = r.json()["usage"]["prompt_tokens"]
        assert r.headers["x-sim-kv-transferred-tokens"] == str(n_prompt - 1)
        assert decode.engine.state()["kv_transferred_tokens"] == n_prompt - 1
        metrics = (await client.get(decode.url + "/metrics")).text
        assert f'sim:kv_transfer_tokens_total{{engine="0",model_name="{MODEL}"}} {n_prompt - 1}.0' in metrics


async def test_chunked_prefill_and_lora_blocks_hash_apart() -> None:
    pods = simulated_pods(1, time_scale=0.01, max_num_batched_tokens=64, lora_modules={"ad": "/a"})
    async with pods as cluster, httpx.AsyncClient(timeout=30) as client:
        pod = cluster[0]
        prompt = "a prompt long enough to need several prefill chunks " * 30  # ~300 tokens
        r = await client.post(pod.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 1})
        assert r.json()["usage"]["prompt_tokens"] > 4 * 64
        assert pod.engine.steps >= 5  # 64-token budget per step
        # same text through a LoRA adapter: its blocks carry the adapter name, so no hit
        r = await client.post(pod.url + "/v1/completions", json={"model": "ad", "prompt": prompt, "max_tokens": 1})
        assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        r = await client.post(pod.url + "/v1/completions", json={"model": "ad", "prompt": prompt, "max_tokens": 1})
        assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
