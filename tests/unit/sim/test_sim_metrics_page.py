"""The simulator's /metrics page is prometheus_client's text format of the same state."""

from __future__ import annotations

import random

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from epp.sim.metrics import ITL_BUCKETS, VllmMetrics


def test_page_is_what_prometheus_client_renders_from_the_same_state() -> None:
    m = VllmMetrics("meta-llama/Llama-3.1-8B-Instruct", 8192, 4, {"block_size": "16", "num_gpu_blocks": "1000"})
    rng = random.Random(3)
    for _ in range(500):
        m.time_to_first_token.observe(rng.expovariate(5))
        m.inter_token_latency.observe(rng.choice(ITL_BUCKETS) * rng.random())
        m.iteration_tokens.observe(rng.randrange(1, 5000))
        m.prompt_tokens.inc(rng.randrange(1000))
        m.request_success[rng.choice(["stop", "length"])].inc()
    m.num_requests_waiting.set(3)
    m.kv_cache_usage_perc.set(0.4375)
    for i in range(40):  # more adapter sets than the bounded number of lora_requests_info series
        m.set_lora_info([f"a{i}"], [])
    page = m.render()
    assert page == generate_latest(m.registry)  # prometheus_client's own writer
    families = {f.name: f for f in text_string_to_metric_families(page.decode())}
    assert families["vllm:num_requests_waiting"].samples[0].value == 3
    ttft = families["vllm:time_to_first_token_seconds"]
    assert ttft.type == "histogram"
    assert [s.value for s in ttft.samples if s.name.endswith("_count")] == [500]
    assert families["vllm:cache_config_info"].samples[0].labels == {
        "block_size": "16", "num_gpu_blocks": "1000", "engine": "0"}
    assert len(families["vllm:lora_requests_info"].samples) == 32
    assert families["vllm:request_success"].type == "counter"


def test_sglang_page_is_what_prometheus_client_renders_and_hides_vllm_only_signals() -> None:
    from epp.sim.sglang_metrics import SglangMetrics

    m = SglangMetrics("qwen/Qwen2.5-7B", 100_000, role="decode")
    m.num_requests_running.set(2)
    m.kv_cache_usage_perc.set(0.25)
    m.time_to_first_token.observe(0.3)
    m.request_success["abort"].inc()
    m.time_per_output_token.observe(0.02)  # no SGLang series: recorded, never shown
    m.set_cache_hit_rate(3, 4)
    page = m.render()
    assert page == generate_latest(m.registry)
    text = page.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["sglang:num_used_tokens"].samples[0].value == 25_000
    assert families["sglang:cache_hit_rate"].samples[0].labels["engine_type"] == "decode"
    assert "time_per_output_token" not in text
