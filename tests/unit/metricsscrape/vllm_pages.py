"""Realistic /metrics pages of vLLM (V1 engine) and SGLang, for parser and scraper tests."""

from __future__ import annotations

MODEL = "meta-llama/Llama-3.1-8B-Instruct"

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
    "vllm:request_params_max_tokens",
    "vllm:iteration_tokens_total",
)


def _histogram(name: str, labels: str) -> str:
    lines = [f"# HELP {name} Histogram of {name.split(':')[1]}.", f"# TYPE {name} histogram"]
    count = 0
    for i, le in enumerate(_LATENCY_BUCKETS):
        count += i * 3
        lines.append(f'{name}_bucket{{{labels},le="{le}"}} {float(count)}')
    lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {float(count)}')
    lines.append(f"{name}_count{{{labels}}} {float(count)}")
    lines.append(f"{name}_sum{{{labels}}} {count * 0.173:.6f}")
    return "\n".join(lines)


def vllm_page(waiting: int = 3, running: int = 7, kv: float = 0.42, *, legacy_kv_name: bool = False,
              engines: int = 1, with_lora: bool = True) -> str:
    """A vLLM /metrics page; `engines` > 1 adds data-parallel series (engine="1", ...)."""
    parts = [
        "# HELP python_gc_objects_collected_total Objects collected during gc",
        "# TYPE python_gc_objects_collected_total counter",
        'python_gc_objects_collected_total{generation="0"} 12345.0',
        'python_gc_objects_collected_total{generation="1"} 2345.0',
        "# HELP process_resident_memory_bytes Resident memory size in bytes.",
        "# TYPE process_resident_memory_bytes gauge",
        "process_resident_memory_bytes 2.1474836e+09",
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
    ]
    for e in range(engines):
        parts.append(f'vllm:num_requests_running{{engine="{e}",model_name="{MODEL}"}} {float(running)}')
    parts += [
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
    ]
    for e in range(engines):
        parts.append(f'vllm:num_requests_waiting{{engine="{e}",model_name="{MODEL}"}} {float(waiting)}')
    parts += [
        "# HELP vllm:num_requests_waiting_by_reason Number of requests waiting, by reason.",
        "# TYPE vllm:num_requests_waiting_by_reason gauge",
        f'vllm:num_requests_waiting_by_reason{{engine="0",model_name="{MODEL}",reason="capacity"}} 99.0',
    ]
    kv_name = "vllm:gpu_cache_usage_perc" if legacy_kv_name else "vllm:kv_cache_usage_perc"
    parts += [
        f"# HELP {kv_name} KV-cache usage. 1 means 100 percent usage.",
        f"# TYPE {kv_name} gauge",
    ]
    for e in range(engines):
        parts.append(f'{kv_name}{{engine="{e}",model_name="{MODEL}"}} {kv / (e + 1)}')
    parts += [
        "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.",
        "# TYPE vllm:prefix_cache_queries_total counter",
        f'vllm:prefix_cache_queries_total{{engine="0",model_name="{MODEL}"}} 184320.0',
        "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.",
        "# TYPE vllm:prefix_cache_hits_total counter",
        f'vllm:prefix_cache_hits_total{{engine="0",model_name="{MODEL}"}} 92160.0',
    ]
    if with_lora:
        parts += [
            "# HELP vllm:lora_requests_info Running stats on lora requests.",
            "# TYPE vllm:lora_requests_info gauge",
            'vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql-lora,chat-lora",'
            'waiting_lora_adapters="summarize-lora"} 1.7326e+09',
            'vllm:lora_requests_info{max_lora="4",running_lora_adapters="old-lora",'
            'waiting_lora_adapters=""} 1.7325e+09',
        ]
    parts += [
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
        "# TYPE vllm:cache_config_info gauge",
        'vllm:cache_config_info{block_size="16",cache_dtype="auto",calculate_kv_scales="False",'
        'enable_prefix_caching="True",gpu_memory_utilization="0.9",num_cpu_blocks="None",'
        'num_gpu_blocks="27362",prefix_caching_hash_algo="sha256"} 1.0',
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f'vllm:prompt_tokens_total{{engine="0",model_name="{MODEL}"}} 1.234567e+06',
    ]
    for name in _HISTOGRAMS:
        parts.append(_histogram(name, f'engine="0",model_name="{MODEL}"'))
    return "\n".join(parts) + "\n"


def sglang_page(queue: int = 4, running: int = 8, usage: float = 0.52) -> str:
    return "\n".join([
        "# HELP sglang:num_running_reqs The number of running requests.",
        "# TYPE sglang:num_running_reqs gauge",
        f'sglang:num_running_reqs{{model_name="{MODEL}",tp_rank="0"}} {float(running)}',
        "# HELP sglang:num_queue_reqs The number of requests in the waiting queue.",
        "# TYPE sglang:num_queue_reqs gauge",
        f'sglang:num_queue_reqs{{model_name="{MODEL}",tp_rank="0"}} {float(queue)}',
        "# HELP sglang:token_usage The token usage.",
        "# TYPE sglang:token_usage gauge",
        f'sglang:token_usage{{model_name="{MODEL}",tp_rank="0"}} {usage}',
        "# HELP sglang:cache_hit_rate The prefix cache hit rate.",
        "# TYPE sglang:cache_hit_rate gauge",
        f'sglang:cache_hit_rate{{model_name="{MODEL}",tp_rank="0"}} 0.0075',
        _histogram("sglang:time_to_first_token_seconds", f'model_name="{MODEL}"'),
    ]) + "\n"
