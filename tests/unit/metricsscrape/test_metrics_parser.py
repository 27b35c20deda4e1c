from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.datastore.endpoint import EndpointMetrics
from epp.metricsscrape.mapping import (
    SGLANG,
    VLLM,
    MappingConfigError,
    extract_metrics,
    mapping_from_config,
)
from epp.metricsscrape.parser import MetricsParseError, parse_labels, scan_families
from tests.unit.metricsscrape.vllm_pages import MODEL, sglang_page, vllm_page

WANTED = (
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:lora_requests_info",
    "vllm:cache_config_info",
    "vllm:prefix_cache_hits_total",
)


def test_scan_matches_prometheus_client_parser() -> None:
    page = vllm_page(engines=2)
    reference: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            reference.setdefault(s.name, []).append((dict(s.labels), s.value))
    ours = scan_families(page, WANTED)
    for name in WANTED:
        got = [(s.labels(), s.value) for s in ours[name]]
        assert got == reference[name], name


def test_scan_skips_comments_and_longer_names() -> None:
    page = vllm_page(waiting=3)
    samples = scan_families(page, ["vllm:num_requests_waiting"])["vllm:num_requests_waiting"]
    # vllm:num_requests_waiting_by_reason (value 99) and the # HELP line must not match.
    assert [s.value for s in samples] == [3.0]
    assert samples[0].labels() == {"engine": "0", "model_name": MODEL}


def test_scan_absent_name_is_empty() -> None:
    assert scan_families(vllm_page(), ["vllm:nope"]) == {"vllm:nope": []}


def test_scan_unlabelled_special_values_and_timestamps() -> None:
    page = "a 1.5\nb NaN\nc +Inf 1712345678000\nd{x=\"1\"} -Inf\n"
    got = scan_families(page, ["a", "b", "c", "d"])
    assert got["a"][0].value == 1.5 and got["a"][0].raw_labels == ""
    assert math.isnan(got["b"][0].value)
    assert got["c"][0].value == math.inf
    assert got["d"][0].value == -math.inf


def test_labels_with_escapes_and_braces() -> None:
    page = 'm{a="x}y",b="say \\"hi\\"",c="back\\\\slash",d="line\\nbreak"} 2\n'
    sample = scan_families(page, ["m"])["m"][0]
    assert sample.value == 2.0
    assert sample.labels() == {"a": "x}y", "b": 'say "hi"', "c": "back\\slash", "d": "line\nbreak"}


def test_malformed_lines_raise() -> None:
    with pytest.raises(MetricsParseError, match="bad sample value"):
        scan_families("m{a=\"1\"} zz\n", ["m"])
    with pytest.raises(MetricsParseError, match="unterminated"):
        scan_families('m{a="1" 3\n', ["m"])
    with pytest.raises(MetricsParseError, match="without value"):
        scan_families("m \n", ["m"])
    with pytest.raises(MetricsParseError, match="malformed labels"):
        parse_labels('a="1",b=2')


def test_extract_vllm_signals() -> None:
    m = extract_metrics(vllm_page(waiting=3, running=7, kv=0.42), VLLM, now=12.5)
    assert (m.waiting_queue_size, m.running_requests, m.kv_cache_usage) == (3, 7, 0.42)
    # newest lora_requests_info series wins (value is its update timestamp)
    assert m.active_loras == frozenset({"sql-lora", "chat-lora"})
    assert m.waiting_loras == frozenset({"summarize-lora"})
    assert m.max_loras == 4
    assert (m.block_size, m.num_gpu_blocks) == (16, 27362)
    assert m.updated_at == 12.5


def test_extract_legacy_kv_name_and_data_parallel_ranks() -> None:
    m = extract_metrics(vllm_page(waiting=2, running=5, kv=0.9, legacy_kv_name=True, engines=2), VLLM, 1.0)
    assert m.waiting_queue_size == 4  # summed over engine="0" and engine="1"
    assert m.running_requests == 10
    assert m.kv_cache_usage == 0.9  # max over ranks


def test_extract_keeps_previous_for_absent_signals() -> None:
    prev = EndpointMetrics(active_loras=frozenset({"x"}), max_loras=2, block_size=32)
    m = extract_metrics(vllm_page(with_lora=False), VLLM, 1.0, prev)
    assert m.active_loras == frozenset({"x"}) and m.max_loras == 2
    assert m.block_size == 16  # present on the page


def test_extract_sglang() -> None:
    m = extract_metrics(sglang_page(queue=4, running=8, usage=0.52), SGLANG, 3.0)
    assert (m.waiting_queue_size, m.running_requests, m.kv_cache_usage) == (4, 8, 0.52)
    assert m.active_loras == frozenset()


def test_mapping_from_config() -> None:
    assert mapping_from_config({"engine": "sglang"}) == SGLANG
    custom = mapping_from_config({"engine": "vllm", "waitingQueue": "my:queue", "kvCacheUsage": ["a", "b"]})
    assert custom.waiting_queue == ("my:queue",)
    assert custom.kv_cache_usage == ("a", "b")
    assert custom.running_requests == VLLM.running_requests
    with pytest.raises(MappingConfigError, match="unknown engine 'tgi'"):
        mapping_from_config({"engine": "tgi"})
    with pytest.raises(MappingConfigError, match="unknown field 'queue'"):
        mapping_from_config({"queue": "x"})
    with pytest.raises(MappingConfigError, match="waitingQueue must be"):
        mapping_from_config({"waitingQueue": 3})


def _itl_page(name: str, observations: list[list[float]]) -> str:
    """A page rendered by prometheus_client (vLLM's own metrics library): one inter-token
    latency histogram series per engine (data-parallel rank), next to the gauges."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    registry = CollectorRegistry()
    hist = Histogram(name, "Histogram of inter-token latency in seconds.", ["model_name", "engine"],
                     buckets=(0.01, 0.025, 0.05, 0.1, 1.0), registry=registry)
    for engine, values in enumerate(observations):
        for v in values:
            hist.labels(model_name=MODEL, engine=str(engine)).observe(v)
    return sglang_page() + generate_latest(registry).decode() + "vllm:num_requests_waiting 1\n"


def test_extract_inter_token_latency_sum_and_count() -> None:
    m = extract_metrics(_itl_page("vllm:inter_token_latency_seconds", [[0.02, 0.03, 0.5], [0.04]]), VLLM, 1.0)
    assert (m.itl_sum, m.itl_count) == (pytest.approx(0.59), 4.0)  # both ranks: the pod's total
    assert m.waiting_queue_size == 1


def test_extract_inter_token_latency_agrees_with_prometheus_client() -> None:
    page = vllm_page(engines=2)
    want = {"sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(page):
        if family.name == "vllm:inter_token_latency_seconds":
            for sample in family.samples:
                for suffix in want:
                    if sample.name.endswith("_" + suffix):
                        want[suffix] += sample.value
    assert want["count"] > 0
    m = extract_metrics(page, VLLM, 1.0)
    assert (m.itl_sum, m.itl_count) == (pytest.approx(want["sum"]), want["count"])


def test_extract_inter_token_latency_legacy_name_and_absence() -> None:
    m = extract_metrics(_itl_page("vllm:time_per_output_token_seconds", [[0.02, 0.04]]), VLLM, 1.0)
    assert (m.itl_sum, m.itl_count) == (pytest.approx(0.06), 2.0)
    m = extract_metrics(_itl_page("other:latency_seconds", [[0.02]]), VLLM, 1.0)
    assert (m.itl_sum, m.itl_count) == (-1.0, -1.0)  # not exported: the ledger skips the pod
    m = extract_metrics(sglang_page(), SGLANG, 1.0)
    assert m.itl_count == -1.0
    off = mapping_from_config({"interTokenLatency": []})
    assert extract_metrics(_itl_page("vllm:inter_token_latency_seconds", [[0.02]]), off, 1.0).itl_count == -1.0
