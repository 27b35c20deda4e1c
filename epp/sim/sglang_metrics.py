"""SGLang's Prometheus metrics, for the simulator's `--engine sglang` personality.

Names, types, label sets and buckets follow sglang/srt/metrics/collector.py
(SchedulerMetricsCollector, TokenizerMetricsCollector) and the scheduler's label dict
(scheduler_metrics_mixin.py): scheduler gauges carry `model_name`, `engine_type`
("unified" | "prefill" | "decode"), `tp_rank`, `pp_rank` and `moe_ep_rank`; the tokenizer
manager's counters and histograms carry `model_name` only.

The engine (epp/sim/engine.py) drives one metrics object through the attribute names of
VllmMetrics; this class offers the same attributes. Signals SGLang has no series for (e.g.
vLLM's prefill/decode phase histograms) are recorded into a registry that is never
exposed, so the engine stays engine-agnostic and /metrics shows only SGLang's names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from epp.observability.fastmetrics import (
    CounterChild,
    FastCounter,
    FastGauge,
    FastHistogram,
    GaugeChild,
    HistogramChild,
    MetricsPage,
)
from epp.sim.metrics import FINISHED_REASONS, ITL_BUCKETS, REQUEST_LATENCY_BUCKETS, TTFT_BUCKETS

# sglang TokenizerMetricsCollector defaults.
SGLANG_TTFT_BUCKETS = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400]
SGLANG_E2E_BUCKETS = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 600, 1200,
                      1800, 2400]  # fmt: skip
SGLANG_ITL_BUCKETS = [0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060,
                      0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000]  # fmt: skip
# sglang SchedulerMetricsCollector.queue_time buckets.
SGLANG_QUEUE_BUCKETS = [0.0, 0.1, 0.2, 0.5, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100, 200,
                        300, 400, 500, 600, 700, 800, 900, 1000, 1200, 1400, 1600, 1800, 2000, 2500, 3000]  # fmt: skip
ENGINE_TYPES = {"both": "unified", "prefill": "prefill", "decode": "decode"}


class _TokenUsage:
    """`sglang:token_usage` (fraction of the KV pool in use) and `sglang:num_used_tokens`,
    set together from the one usage value the engine reports."""

    __slots__ = ("_capacity", "_usage", "_used")

    def __init__(self, usage: GaugeChild, used: GaugeChild, capacity: int) -> None:
        self._usage, self._used, self._capacity = usage, used, capacity

    def set(self, value: float) -> None:
        self._usage.set(value)
        self._used.set(round(value * self._capacity))


class SglangMetrics:
    """The metric families an SGLang server exposes, bound to one pod's labels."""

    def __init__(self, model_name: str, max_total_num_tokens: int, role: str = "both") -> None:
        self.page = MetricsPage()
        self.registry = self.page.registry
        add = self.page.add
        # Engine signals SGLang does not export: recorded, never rendered.
        self._unexported = hidden = CollectorRegistry(auto_describe=False)
        sched_labels = ["model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank"]
        sched_values = (model_name, ENGINE_TYPES.get(role, "unified"), "0", "0", "0")

        def gauge(name: str, doc: str) -> GaugeChild:
            return add(FastGauge(name, doc, sched_labels)).labels(*sched_values)

        def tok_counter(name: str, doc: str) -> CounterChild:
            return add(FastCounter(name, doc, ["model_name"])).labels(model_name)

        def tok_histogram(name: str, doc: str, buckets: list[float]) -> HistogramChild:
            return add(FastHistogram(name, doc, ["model_name"], buckets=buckets)).labels(model_name)

        def unexported_counter(name: str) -> CounterChild:
            return FastCounter(name, name, registry=hidden).labels()

        def unexported_histogram(name: str, buckets: list[float]) -> HistogramChild:
            return FastHistogram(name, name, buckets=buckets, registry=hidden).labels()

        # --- scheduler gauges (the ones an endpoint picker reads) ---
        self.num_requests_running = gauge("sglang:num_running_reqs", "The number of running requests.")
        self.num_requests_waiting = gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.")
        token_usage = gauge("sglang:token_usage", "The token usage.")
        used_tokens = gauge("sglang:num_used_tokens", "The number of used tokens.")
        self.kv_cache_usage_perc = _TokenUsage(token_usage, used_tokens, max_total_num_tokens)
        self.cache_hit_rate = gauge("sglang:cache_hit_rate", "The prefix cache hit rate.")
        gauge("sglang:max_total_num_tokens",
              "Maximum total number of tokens in the KV cache pool.").set(max_total_num_tokens)
        self.gen_throughput = gauge("sglang:gen_throughput", "The generation throughput (token/s).")
        self.num_retracted_reqs = gauge("sglang:num_retracted_reqs", "The number of retracted requests.")
        self.queue_time = add(FastHistogram(
            "sglang:queue_time_seconds", "Histogram of queueing time in seconds.", sched_labels,
            buckets=SGLANG_QUEUE_BUCKETS)).labels(*sched_values)
        self.num_preemptions = add(FastCounter(
            "sglang:num_retracted_requests_total", "Total number of retracted requests.", sched_labels,
        )).labels(*sched_values)
        # --- tokenizer-manager counters and histograms ---
        self.prompt_tokens = tok_counter("sglang:prompt_tokens_total", "Number of prefill tokens processed.")
        self.generation_tokens = tok_counter("sglang:generation_tokens_total",
                                             "Number of generation tokens processed.")
        self.prefix_cache_hits = tok_counter("sglang:cached_tokens_total", "Number of cached prompt tokens.")
        finished = tok_counter("sglang:num_requests_total", "Number of requests processed.")
        aborted = tok_counter("sglang:num_aborted_requests_total", "Number of requests aborted.")
        self.request_success = {reason: (aborted if reason == "abort" else finished) for reason in FINISHED_REASONS}
        self.time_to_first_token = tok_histogram("sglang:time_to_first_token_seconds",
                                                 "Histogram of time to first token in seconds.", SGLANG_TTFT_BUCKETS)
        self.inter_token_latency = tok_histogram("sglang:inter_token_latency_seconds",
                                                 "Histogram of inter-token latency in seconds.", SGLANG_ITL_BUCKETS)
        self.e2e_request_latency = tok_histogram("sglang:e2e_request_latency_seconds",
                                                 "Histogram of End-to-end request latency in seconds",
                                                 SGLANG_E2E_BUCKETS)
        self.request_queue_time = self.queue_time
        # --- engine signals without an SGLang series ---
        self.gpu_cache_usage_perc = FastGauge("gpu_cache_usage_perc", "unexported", registry=hidden).labels()
        self.prefix_cache_queries = unexported_counter("prefix_cache_queries")
        self.kv_transfer_tokens = unexported_counter("kv_transfer_tokens")
        self.time_per_output_token = unexported_histogram("time_per_output_token", ITL_BUCKETS)
        self.request_prefill_time = unexported_histogram("request_prefill_time", REQUEST_LATENCY_BUCKETS)
        self.request_decode_time = unexported_histogram("request_decode_time", REQUEST_LATENCY_BUCKETS)
        self.request_prompt_tokens = unexported_histogram("request_prompt_tokens", TTFT_BUCKETS)
        self.request_generation_tokens = unexported_histogram("request_generation_tokens", TTFT_BUCKETS)
        self.iteration_tokens = unexported_histogram("iteration_tokens", TTFT_BUCKETS)

    def set_lora_info(self, running: list[str], waiting: list[str]) -> None:
        """SGLang has no per-adapter info series (only pool slot gauges with --enable-lora)."""

    def set_cache_hit_rate(self, hit_tokens: int, query_tokens: int) -> None:
        # SGLang reports the hit rate of recent prefill batches; the simulator's is cumulative.
        self.cache_hit_rate.set(hit_tokens / query_tokens if query_tokens else 0.0)

    def render(self) -> bytes:
        return self.page.render()
