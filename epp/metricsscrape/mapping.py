"""Which Prometheus names carry which signal, per model-server engine.

vLLM is the reference (GIE model-server protocol). SGLang's names are those of its
SchedulerMetricsCollector (sglang/srt/metrics/collector.py): `sglang:num_queue_reqs`,
`sglang:num_running_reqs`, `sglang:token_usage` (KV pool use, 0..1), one series per
scheduler labelled model_name, engine_type, tp_rank, pp_rank, moe_ep_rank (+ dp_rank).
The mapping is chosen per pool (`epp serve --engine sglang`) or per pod (`--engine-label`).
Each signal lists candidate names; the first one present in a scrape wins, which is how
vLLM's rename of `gpu_cache_usage_perc` to `kv_cache_usage_perc` is absorbed.
Several series of one name (data-parallel ranks, tp_rank labels) are summed for counts and
max-ed for utilisation, so one full rank marks the pod as full.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from epp.datastore.endpoint import EndpointMetrics
from epp.metricsscrape.parser import Sample, scan_families


@dataclass(frozen=True, slots=True)
class MetricMapping:
    """Metric names of one engine. Empty tuples / strings disable a signal."""

    engine: str
    waiting_queue: tuple[str, ...]
    running_requests: tuple[str, ...]
    kv_cache_usage: tuple[str, ...]
    # Histogram base names (their _sum and _count samples are read) of the per-token decode
    # latency; () = not read.
    inter_token_latency: tuple[str, ...] = ()
    lora_info: str = ""
    lora_running_label: str = "running_lora_adapters"
    lora_waiting_label: str = "waiting_lora_adapters"
    lora_max_label: str = "max_lora"
    cache_config_info: str = ""
    block_size_label: str = "block_size"
    num_gpu_blocks_label: str = "num_gpu_blocks"

    def sample_names(self) -> tuple[str, ...]:
        # Not the inter-token latency names: extract_metrics looks for those one candidate at
        # a time and stops at the first present (each name is a str.find over the page).
        names = [*self.waiting_queue, *self.running_requests, *self.kv_cache_usage]
        if self.lora_info:
            names.append(self.lora_info)
        if self.cache_config_info:
            names.append(self.cache_config_info)
        return tuple(dict.fromkeys(names))


VLLM = MetricMapping(
    engine="vllm",
    waiting_queue=("vllm:num_requests_waiting",),
    running_requests=("vllm:num_requests_running",),
    kv_cache_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    # vLLM v1's per-token gap histogram; older releases export the same observations as
    # time_per_output_token_seconds (v1 kept that name as a deprecated alias for a while).
    inter_token_latency=("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    lora_info="vllm:lora_requests_info",
    cache_config_info="vllm:cache_config_info",
)

SGLANG = MetricMapping(
    engine="sglang",
    waiting_queue=("sglang:num_queue_reqs",),
    running_requests=("sglang:num_running_reqs",),
    kv_cache_usage=("sglang:token_usage",),
)

# Read-only table of built-in engines (not mutable process state).
ENGINE_MAPPINGS: Mapping[str, MetricMapping] = types.MappingProxyType({"vllm": VLLM, "sglang": SGLANG})

_FIELD_ALIASES = {
    "waitingQueue": "waiting_queue",
    "runningRequests": "running_requests",
    "kvCacheUsage": "kv_cache_usage",
    "interTokenLatency": "inter_token_latency",
    "loraInfo": "lora_info",
    "cacheConfigInfo": "cache_config_info",
}


class MappingConfigError(ValueError):
    """Bad metric-mapping configuration (names the offending field)."""


def mapping_from_config(raw: Mapping[str, Any] | None, where: str = "metrics mapping") -> MetricMapping:
    """Build a mapping from config: `{engine: sglang}` or `{engine: vllm, kvCacheUsage: [a, b]}`.

    Unknown keys are errors; names may be a string or a list of candidate strings.
    """
    raw = dict(raw or {})
    engine = raw.pop("engine", "vllm")
    base = ENGINE_MAPPINGS.get(engine)
    if base is None:
        raise MappingConfigError(f"{where}: unknown engine {engine!r} (known: {', '.join(ENGINE_MAPPINGS)})")
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        field_name = _FIELD_ALIASES.get(key, key)
        if field_name not in MetricMapping.__dataclass_fields__ or field_name == "engine":
            known = ", ".join(_FIELD_ALIASES)
            raise MappingConfigError(f"{where}: unknown field {key!r} (known: engine, {known})")
        current = getattr(base, field_name)
        if isinstance(current, tuple):
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise MappingConfigError(f"{where}: {key} must be a metric name or a list of names")
            changes[field_name] = tuple(names)
        else:
            if not isinstance(value, str):
                raise MappingConfigError(f"{where}: {key} must be a string, got {value!r}")
            changes[field_name] = value
    return replace(base, **changes)


def _first_present(families: Mapping[str, list[Sample]], names: tuple[str, ...]) -> list[Sample] | None:
    for name in names:
        samples = families.get(name)
        if samples:
            return samples
    return None


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def _csv_set(value: str) -> frozenset[str]:
    return frozenset(p.strip() for p in value.split(",") if p.strip())


def _int_label(labels: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(float(labels[name]))
    except (KeyError, ValueError):
        return default


def extract_metrics(
    text: str, mapping: MetricMapping, now: float, previous: EndpointMetrics | None = None
) -> EndpointMetrics:
    """Build EndpointMetrics from one /metrics page. Signals absent from the page keep their
    previous value (or the default), so a pod without LoRA support reports no adapters."""
    prev = previous or EndpointMetrics()
    families = scan_families(text, mapping.sample_names())
    waiting = prev.waiting_queue_size
    running = prev.running_requests
    kv = prev.kv_cache_usage
    samples = _first_present(families, mapping.waiting_queue)
    if samples is not None:
        waiting = int(sum(_finite([s.value for s in samples])))
    samples = _first_present(families, mapping.running_requests)
    if samples is not None:
        running = int(sum(_finite([s.value for s in samples])))
    samples = _first_present(families, mapping.kv_cache_usage)
    if samples is not None:
        finite = _finite([s.value for s in samples])
        kv = max(finite) if finite else kv
    itl_sum, itl_count = prev.itl_sum, prev.itl_count
    for base in mapping.inter_token_latency:
        histogram = scan_families(text, (f"{base}_sum", f"{base}_count"))
        sums = histogram[f"{base}_sum"]
        counts = histogram[f"{base}_count"]
        if sums and counts:  # several series (data-parallel ranks): the pod's total
            itl_sum = math.fsum(_finite([s.value for s in sums]))
            itl_count = math.fsum(_finite([s.value for s in counts]))
            break
    active_loras, waiting_loras, max_loras = prev.active_loras, prev.waiting_loras, prev.max_loras
    lora_samples = families.get(mapping.lora_info) if mapping.lora_info else None
    if lora_samples:
        # The gauge value is the time the series was last updated: the newest one is current.
        newest = max(lora_samples, key=lambda s: s.value)
        labels = newest.labels()
        active_loras = _csv_set(labels.get(mapping.lora_running_label, ""))
        waiting_loras = _csv_set(labels.get(mapping.lora_waiting_label, ""))
        max_loras = _int_label(labels, mapping.lora_max_label, max_loras)
    block_size, num_gpu_blocks = prev.block_size, prev.num_gpu_blocks
    cache_samples = families.get(mapping.cache_config_info) if mapping.cache_config_info else None
    if cache_samples:
        labels = cache_samples[0].labels()
        block_size = _int_label(labels, mapping.block_size_label, block_size)
        num_gpu_blocks = _int_label(labels, mapping.num_gpu_blocks_label, num_gpu_blocks)
    return EndpointMetrics(
        waiting_queue_size=waiting,
        running_requests=running,
        kv_cache_usage=kv,
        active_loras=active_loras,
        waiting_loras=waiting_loras,
        max_loras=max_loras,
        block_size=block_size,
        num_gpu_blocks=num_gpu_blocks,
        itl_sum=itl_sum,
        itl_count=itl_count,
        updated_at=now,
    )
