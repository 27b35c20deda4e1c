"""vLLM v1 Prometheus metrics (names, types, labels and buckets of vllm/v1/metrics/loggers.py).

Each simulated pod has its own MetricsPage of the lock-free families of
epp/observability/fastmetrics.py, and serves it with `render_text` (prometheus_client's
text format at a tenth of the CPU: the EPP scrapes a busy pod every 50 ms, and on a shared
machine the simulator's rendering would otherwise be charged to the router that scrapes).
Labels are `model_name` (the first served model name) and `engine` ("0"), like vLLM.
Latencies are observed in model time (wall time divided by the pod's time_scale).
"""

from __future__ import annotations

from collections import OrderedDict

from epp.observability.fastmetrics import (
    CounterChild,
    FastCounter,
    FastGauge,
    FastHistogram,
    GaugeChild,
    HistogramChild,
    MetricsPage,
)

TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]  # fmt: skip
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0]  # fmt: skip
REQUEST_LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]  # fmt: skip
FINISHED_REASONS = ("stop", "length", "abort")
# vLLM adds a new lora_requests_info series whenever the adapter sets change and never removes
# old ones; consumers take the series with the newest timestamp value. We keep the same shape
# but bound the number of stale series.
MAX_LORA_INFO_SERIES = 32


def build_1_2_5_buckets(max_value: int) -> list[float]:
    buckets: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(float(value))
        exponent += 1


class VllmMetrics:
    """The metric families a vLLM pod exposes, bound to one pod's labels."""

    def __init__(
        self, model_name: str, max_model_len: int, max_loras: int, cache_info: dict[str, str]
    ) -> None:
        self.page = MetricsPage()
        self.registry = self.page.registry
        add = self.page.add
        labels = ["model_name", "engine"]
        values = (model_name, "0")

        def gauge(name: str, doc: str) -> GaugeChild:
            return add(FastGauge(name, doc, labels)).labels(*values)

        def counter(name: str, doc: str) -> CounterChild:
            return add(FastCounter(name, doc, labels)).labels(*values)

        def histogram(name: str, doc: str, buckets: list[float]) -> HistogramChild:
            return add(FastHistogram(name, doc, labels, buckets=buckets)).labels(*values)

        self.num_requests_running = gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        )
        self.num_requests_waiting = gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        )
        self.kv_cache_usage_perc = gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        )
        self.gpu_cache_usage_perc = gauge(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage."
            "DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
        )
        self.prefix_cache_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."
        )
        self.prefix_cache_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        self.num_preemptions = counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = add(FastCounter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
        ))
        self.request_success = {reason: success.labels(*values, reason) for reason in FINISHED_REASONS}
        token_buckets = build_1_2_5_buckets(max_model_len)
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", token_buckets
        )
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
        )
        self.time_to_first_token = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.inter_token_latency = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS
        )
        self.time_per_output_token = histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            ITL_BUCKETS,
        )
        self.e2e_request_latency = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.lora_requests_info = add(FastGauge(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
        ))
        self._max_lora = str(max_loras)
        self._lora_series: OrderedDict[tuple[str, str], None] = OrderedDict()
        cache_info_labels = [*sorted(cache_info), "engine"]
        cache_config_info = add(FastGauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            cache_info_labels,
        ))
        cache_info_values = {**cache_info, "engine": "0"}
        cache_config_info.labels(*(cache_info_values[k] for k in cache_info_labels)).set(1)
        # Simulator-only: tokens whose KV was pulled from a prefill pod instead of computed.
        self.kv_transfer_tokens = counter(
            "sim:kv_transfer_tokens", "Prompt tokens whose KV was received from a remote prefill pod."
        )

    def set_lora_info(self, running: list[str], waiting: list[str]) -> None:
        key = (",".join(waiting), ",".join(running))
        self.lora_requests_info.labels(self._max_lora, key[0], key[1]).set_to_current_time()
        self._lora_series[key] = None
        self._lora_series.move_to_end(key)
        while len(self._lora_series) > MAX_LORA_INFO_SERIES:
            (old_waiting, old_running), _ = self._lora_series.popitem(last=False)
            self.lora_requests_info.remove(self._max_lora, old_waiting, old_running)

    def set_cache_hit_rate(self, hit_tokens: int, query_tokens: int) -> None:
        """vLLM exports the hit and query counters instead of a rate (prefix_cache_*)."""

    def render(self) -> bytes:
        return self.page.render()
