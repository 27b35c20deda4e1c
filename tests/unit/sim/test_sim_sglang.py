"""The simulator's SGLang personality: SGLang's metric names and labels, owned_by, error bodies.

The exposition is read back with prometheus_client's own parser (an independent reader),
and the expected names/labels are the ones of sglang/srt/metrics/collector.py.
"""

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from epp.metricsscrape.mapping import SGLANG, VLLM, extract_metrics
from epp.sim.cluster import simulated_pods

MODEL = "Qwen/Qwen2.5-7B-Instruct"
SCHED_LABELS = {"model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank"}


async def test_sglang_metrics_models_and_errors() -> None:
    # One sequence at a time and long outputs: later requests wait in the queue.
    async with simulated_pods(1, engine="sglang", model=MODEL, time_scale=0.05, max_num_seqs=1) as cluster:
        url = cluster.urls[0]
        async with httpx.AsyncClient(timeout=10) as client:
            body = {"model": MODEL, "prompt": "Once upon a time " * 20, "max_tokens": 2000}
            tasks = [asyncio.create_task(client.post(f"{url}/v1/completions", json=body)) for _ in range(4)]
            for _ in range(100):
                state = (await client.get(f"{url}/sim/state")).json()
                if state["waiting"] >= 2:
                    break
                await asyncio.sleep(0.02)
            page = (await client.get(f"{url}/metrics")).text
            state = (await client.get(f"{url}/sim/state")).json()
            families = {f.name: f for f in text_string_to_metric_families(page)}
            # prometheus_client's parser drops a counter's _total suffix from the family name.
            for name in ("sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage",
                         "sglang:cache_hit_rate", "sglang:num_used_tokens", "sglang:max_total_num_tokens",
                         "sglang:gen_throughput"):
                assert families[name].type == "gauge", name
                (sample,) = families[name].samples
                assert set(sample.labels) == SCHED_LABELS and sample.labels["engine_type"] == "unified"
                assert sample.labels["model_name"] == MODEL
            for name in ("sglang:prompt_tokens", "sglang:generation_tokens", "sglang:cached_tokens",
                         "sglang:num_requests"):
                assert families[name].type == "counter", name
            for name in ("sglang:time_to_first_token_seconds", "sglang:e2e_request_latency_seconds",
                         "sglang:inter_token_latency_seconds"):
                assert families[name].type == "histogram"
                assert {s.labels.get("model_name") for s in families[name].samples} == {MODEL}
            assert not [n for n in families if n.startswith("vllm:")], "an SGLang pod exports no vllm: names"
            assert families["sglang:num_queue_reqs"].samples[0].value >= 1

            # The EPP's SGLang mapping reads the page's numbers (as prometheus_client parses
            # them); the vLLM mapping finds nothing. The engine keeps running between the
            # page and /sim/state, so those are compared loosely.
            m = extract_metrics(page, SGLANG, now=0.0)
            value = {name: families[name].samples[0].value
                     for name in ("sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage")}
            assert (m.waiting_queue_size, m.running_requests, m.kv_cache_usage) == (
                value["sglang:num_queue_reqs"], value["sglang:num_running_reqs"], value["sglang:token_usage"])
            assert m.running_requests == state["running"] == 1 and m.waiting_queue_size >= 2
            assert extract_metrics(page, VLLM, now=0.0).waiting_queue_size == 0

            models = (await client.get(f"{url}/v1/models")).json()
            assert [(m["id"], m["owned_by"]) for m in models["data"]] == [(MODEL, "sglang")]

            bad = await client.post(f"{url}/v1/completions", json={"model": "nope", "prompt": "x"})
            err = bad.json()
            # SGLang's flat ErrorResponse: object="error" with message/type/param/code at the top.
            assert bad.status_code == 404 and err["object"] == "error" and err["code"] == 404
            assert {"message", "type", "param"} <= set(err) and "error" not in err
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_vllm_personality_unchanged() -> None:
    async with simulated_pods(1, time_scale=0.01) as cluster, httpx.AsyncClient(timeout=5) as client:
        url = cluster.urls[0]
        assert (await client.get(f"{url}/v1/models")).json()["data"][0]["owned_by"] == "vllm"
        page = (await client.get(f"{url}/metrics")).text
        assert "vllm:num_requests_waiting" in page and "sglang:" not in page
        err = (await client.post(f"{url}/v1/completions", json={"model": "nope", "prompt": "x"})).json()
        assert set(err) == {"error"} and err["error"]["code"] == 404
