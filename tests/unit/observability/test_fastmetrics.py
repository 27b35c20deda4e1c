"""The lock-free families expose exactly what prometheus_client's own classes expose.

Reference: prometheus_client's Counter / Gauge / Histogram, fed the same updates in a
second registry; the two text expositions must be equal line for line once the `_created`
timestamps (creation time of each series) are normalised.
"""

from __future__ import annotations

import math
import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from epp.observability.fastmetrics import FastCounter, FastGauge, FastHistogram, render_text
from epp.observability.metrics import DURATION_BUCKETS, SCHEDULER_BUCKETS, EPPMetrics

_CREATED = re.compile(r"^(\S+_created(?:\{[^}]*\})?) \S+$", re.MULTILINE)


def _normalised(text: bytes) -> str:
    return _CREATED.sub(r"\1 <ts>", text.decode())


def _pair() -> tuple[CollectorRegistry, CollectorRegistry]:
    return CollectorRegistry(auto_describe=True), CollectorRegistry(auto_describe=True)


# Values on and around bucket bounds, zero, tiny and huge ones, and a NaN.
VALUES = [0.0, 0.0001, 0.00010000001, 0.0002, 0.003, 0.1, 0.25, 1.0, 7.5, 100.0, 1e9, math.inf, math.nan]


def test_labelled_families_match_prometheus_client() -> None:
    ref, fast = _pair()
    labels = ["model_name", "target_model_name"]
    rc = Counter("inference_objective_request_total", "requests", labels, registry=ref)
    fc = FastCounter("inference_objective_request_total", "requests", labels, registry=fast)
    rg = Gauge("inference_objective_running_requests", "running", ["model_name"], registry=ref)
    fg = FastGauge("inference_objective_running_requests", "running", ["model_name"], registry=fast)
    rh = Histogram("inference_extension_plugin_duration_seconds", "plugins", ["extension_point", "plugin_name"],
                   buckets=SCHEDULER_BUCKETS, registry=ref)
    fh = FastHistogram("inference_extension_plugin_duration_seconds", "plugins", ["extension_point", "plugin_name"],
                       buckets=SCHEDULER_BUCKETS, registry=fast)
    rd = Histogram("d_seconds", "durations", ["m"], buckets=DURATION_BUCKETS, registry=ref)
    fd = FastHistogram("d_seconds", "durations", ["m"], buckets=DURATION_BUCKETS, registry=fast)
    # A labelled family with no series yet: HELP and TYPE only, on both.
    Counter("errors_total", "errors", ["code"], registry=ref)
    FastCounter("errors_total", "errors", ["code"], registry=fast)
    for i, v in enumerate(VALUES):
        model = ("llama", "qwen", 'we"ird\\model')[i % 3]
        rc.labels(model, model + "-t").inc()
        fc.labels(model, model + "-t").inc()
        rc.labels(model, model + "-t").inc(2.5)
        fc.labels(model, model + "-t").inc(2.5)
        rg.labels(model).inc()
        fg.labels(model).inc()
        if i % 2:
            rg.labels(model).dec()
            fg.labels(model).dec()
        for point in ("Filter", "Scorer"):
            rh.labels(point, f"p{i % 4}").observe(v)
            fh.labels(point, f"p{i % 4}").observe(v)
        rd.labels(model).observe(v * 3)
        fd.labels(model).observe(v * 3)
    rg.labels("set").set(7)
    fg.labels("set").set(7)
    assert _normalised(generate_latest(fast)) == _normalised(generate_latest(ref))
    assert _normalised(generate_openmetrics(fast)) == _normalised(generate_openmetrics(ref))


def test_unlabelled_families_match_prometheus_client() -> None:
    ref, fast = _pair()
    rc = Counter("scheduler_cache_hits_total", "hits", registry=ref)
    fc = FastCounter("scheduler_cache_hits_total", "hits", registry=fast)
    rh = Histogram("scheduler_decision_duration_seconds", "decisions", buckets=(0.001, 0.01), registry=ref)
    fh = FastHistogram("scheduler_decision_duration_seconds", "decisions", buckets=(0.001, 0.01), registry=fast)
    Gauge("idle", "never set", registry=ref)
    FastGauge("idle", "never set", registry=fast)
    assert _normalised(generate_latest(fast)) == _normalised(generate_latest(ref))  # zero-valued series exist
    for v in (0.0005, 0.001, 0.005, 0.5):
        rc.inc()
        fc.inc()
        rh.observe(v)
        fh.observe(v)
    fc.labels().inc()  # the cached handle is the same series
    rc.inc()
    fh.labels().observe(0.002)
    rh.observe(0.002)
    assert _normalised(generate_latest(fast)) == _normalised(generate_latest(ref))
    assert fast.get_sample_value("scheduler_cache_hits_total") == 5.0
    assert fast.get_sample_value("scheduler_decision_duration_seconds_bucket", {"le": "0.01"}) == 4.0


def test_created_series_follow_prometheus_client_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    import prometheus_client.metrics as pm

    monkeypatch.setattr(pm, "_use_created", False)
    ref, fast = _pair()
    Counter("c_total", "c", registry=ref).inc()
    FastCounter("c_total", "c", registry=fast).inc()
    Histogram("h", "h", buckets=(1.0,), registry=ref).observe(0.5)
    FastHistogram("h", "h", buckets=(1.0,), registry=fast).observe(0.5)
    text = generate_latest(fast)
    assert b"_created" not in text
    assert text == generate_latest(ref)


def test_registry_rejects_duplicate_names_like_prometheus_client() -> None:
    registry = CollectorRegistry(auto_describe=True)
    FastHistogram("h_seconds", "h", buckets=(1.0,), registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("h_seconds_count", "clash with the histogram's _count", registry=registry)


def test_bad_use_is_refused() -> None:
    counter = FastCounter("c_total", "c", ["a"])
    with pytest.raises(ValueError, match="expected 1 label values"):
        counter.labels("x", "y")
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("x").inc(-1)
    with pytest.raises(ValueError, match="sorted"):
        FastHistogram("h", "h", buckets=(2.0, 1.0))


def test_epp_metrics_exposition_matches_prometheus_client_classes() -> None:
    """The whole EPPMetrics after a request's worth of updates against the same families
    built from prometheus_client's classes (what EPPMetrics used before the fast families)."""
    fast = EPPMetrics(commit="abc", build_ref="main")
    m = fast
    series = m.series("llama", "llama-lora")
    series.on_request()
    series.on_request()
    series.on_done(0.3, 120, 7)
    series.on_error("503")
    m.observe_decision("default", 0.0004)
    m.observe_decision("default", 0.02, success=False)
    m.observe_plugin("Scorer", "queue-scorer", "queue", 0.00003)
    m.observe_plugin("Picker", "max-score-picker", "max", 0.0000001)
    m.prefix_cache_lookup(True)
    m.prefix_cache_lookup(False)
    m.prefix_cache_lookup(False)

    ref = CollectorRegistry(auto_describe=True)
    mt = ["model_name", "target_model_name"]
    docs = {f.name: f.documentation for f in fast.registry.collect()}
    from epp.observability import metrics as mod

    rc = Counter("inference_objective_request_total", docs["inference_objective_request"], mt, registry=ref)
    rl = Counter("inference_model_request_total", docs["inference_model_request"], mt, registry=ref)
    re_ = Counter("inference_objective_request_error_total", docs["inference_objective_request_error"],
                  [*mt, "error_code"], registry=ref)
    rd = Histogram("inference_objective_request_duration_seconds",
                   docs["inference_objective_request_duration_seconds"], mt, buckets=mod.DURATION_BUCKETS,
                   registry=ref)
    ri = Histogram("inference_objective_input_tokens", docs["inference_objective_input_tokens"], mt,
                   buckets=mod.INPUT_TOKEN_BUCKETS, registry=ref)
    ro = Histogram("inference_objective_output_tokens", docs["inference_objective_output_tokens"], mt,
                   buckets=mod.OUTPUT_TOKEN_BUCKETS, registry=ref)
    rr = Gauge("inference_objective_running_requests", docs["inference_objective_running_requests"],
               ["model_name"], registry=ref)
    re2e = Histogram("inference_extension_scheduler_e2e_duration_seconds",
                     docs["inference_extension_scheduler_e2e_duration_seconds"], buckets=mod.SCHEDULER_BUCKETS,
                     registry=ref)
    ra = Counter("inference_extension_scheduler_attempts_total", docs["inference_extension_scheduler_attempts"],
                 ["status"], registry=ref)
    rp = Histogram("inference_extension_plugin_duration_seconds", docs["inference_extension_plugin_duration_seconds"],
                   ["extension_point", "plugin_type", "plugin_name"], buckets=mod.SCHEDULER_BUCKETS, registry=ref)
    Gauge("inference_extension_info", docs["inference_extension_info"], ["commit", "build_ref"],
          registry=ref).labels("abc", "main").set(1)
    rs = Counter("scheduler_requests_total", docs["scheduler_requests"], ["profile", "result"], registry=ref)
    ref.register(mod.PodScoreCollector())
    rh = Counter("scheduler_cache_hits_total", docs["scheduler_cache_hits"], registry=ref)
    rm = Counter("scheduler_cache_misses_total", docs["scheduler_cache_misses"], registry=ref)
    rdd = Histogram("scheduler_decision_duration_seconds", docs["scheduler_decision_duration_seconds"],
                    buckets=mod.DECISION_BUCKETS, registry=ref)
    ra.labels("success")
    ra.labels("failure")
    for _ in range(2):
        rc.labels("llama", "llama-lora").inc()
        rl.labels("llama", "llama-lora").inc()
        rr.labels("llama").inc()
    rr.labels("llama").dec()
    rd.labels("llama", "llama-lora").observe(0.3)
    ri.labels("llama", "llama-lora").observe(120)
    ro.labels("llama", "llama-lora").observe(7)
    re_.labels("llama", "llama-lora", "503").inc()
    for seconds, ok in ((0.0004, True), (0.02, False)):
        re2e.observe(seconds)
        rdd.observe(seconds)
        ra.labels("success" if ok else "failure").inc()
        rs.labels("default", "success" if ok else "failure").inc()
    rp.labels("Scorer", "queue-scorer", "queue").observe(0.00003)
    rp.labels("Picker", "max-score-picker", "max").observe(0.0000001)
    rh.inc()
    rm.inc()
    rm.inc()
    assert _normalised(generate_latest(fast.registry)) == _normalised(generate_latest(ref))


def test_render_text_writes_what_prometheus_client_writes_for_the_same_updates() -> None:
    """Random updates on both sides; `render_text` against prometheus_client's own
    generate_latest over its own classes, after every few steps."""
    import random

    rng = random.Random(7)
    ref, fast = _pair()
    names = ["model_name", "engine"]
    values = ('org/model "q"\\x\nz', "0")  # a label value that needs every escape
    doc = 'Prompt tokens.\nA second line with a \\ backslash'
    pc = Counter("vllm:prompt_tokens", doc, names, registry=ref).labels(*values)
    fc = FastCounter("vllm:prompt_tokens", doc, names, registry=fast)
    fcc = fc.labels(*values)
    pg = Gauge("vllm:num_requests_running", "Running.", names, registry=ref).labels(*values)
    fg = FastGauge("vllm:num_requests_running", "Running.", names, registry=fast)
    fgc = fg.labels(*values)
    ttft = [0.001, 0.005, 0.01, 0.25, 2560.0]
    ph = Histogram("vllm:ttft_seconds", "TTFT.", names, buckets=ttft, registry=ref).labels(*values)
    fh = FastHistogram("vllm:ttft_seconds", "TTFT.", names, buckets=ttft, registry=fast)
    fhc = fh.labels(*values)
    pu = Histogram("unlabelled_seconds", "No labels.", buckets=[1, 8, 8192], registry=ref)
    fu = FastHistogram("unlabelled_seconds", "No labels.", buckets=[1, 8, 8192], registry=fast)
    reasons = ("stop", "length", "abort")
    ps = Counter("vllm:request_success", "Successes.", [*names, "finished_reason"], registry=ref)
    fs = FastCounter("vllm:request_success", "Successes.", [*names, "finished_reason"], registry=fast)
    p_success = {r: ps.labels(*values, r) for r in reasons}
    f_success = {r: fs.labels(*values, r) for r in reasons}
    lora_labels = ["max_lora", "waiting", "running"]
    plora = Gauge("vllm:lora_requests_info", "LoRA.", lora_labels, registry=ref)
    flora = FastGauge("vllm:lora_requests_info", "LoRA.", lora_labels, registry=fast)
    empty_ref = Counter("never_used", "A labelled family without series.", ["x"], registry=ref)
    empty_fast = FastCounter("never_used", "A labelled family without series.", ["x"], registry=fast)
    families = [fc, fg, fh, fu, fs, flora, empty_fast]

    def same(step: int) -> None:
        assert _normalised(render_text(families)) == _normalised(generate_latest(ref)), step

    same(-1)
    live: list[tuple[str, str, str]] = []
    for step in range(3000):
        op = rng.randrange(7)
        if op == 0:
            n = rng.choice([1, 3, 250, 1_234_567, 0.5])
            pc.inc(n)
            fcc.inc(n)
        elif op == 1:
            v = rng.choice([0, 1, 7, 0.25, 1e-7, 123456789.0, -3.5])
            pg.set(v)
            fgc.set(v)
        elif op == 2:
            pg.inc(2)
            fgc.inc(2)
            pg.dec(0.5)
            fgc.dec(0.5)
        elif op == 3:
            v = rng.choice([0.0, 0.001, 0.0011, 2560.0, 3000.0, rng.random() * 10, rng.expovariate(0.1)])
            ph.observe(v)
            fhc.observe(v)
            pu.observe(v * 1000)
            fu.observe(v * 1000)
        elif op == 4:
            r = rng.choice(reasons)
            p_success[r].inc()
            f_success[r].inc()
        elif op == 5:
            key = ("4", rng.choice(["", "a", "a,b"]), rng.choice(["", "c"]))
            plora.labels(*key).set(step)
            flora.labels(*key).set(step)
            if key not in live:
                live.append(key)
        elif live:
            key = live.pop(rng.randrange(len(live)))
            plora.remove(*key)
            flora.remove(*key)
        if step % 97 == 0:
            same(step)
    assert empty_ref is not None
    same(3000)


def test_set_to_current_time_as_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr(time, "time", lambda: 1_796_139_288.1620324)
    ref, fast = _pair()
    Gauge("info", "Info.", ["a"], registry=ref).labels("x").set_to_current_time()
    f = FastGauge("info", "Info.", ["a"], registry=fast)
    f.labels("x").set_to_current_time()
    assert render_text([f]) == generate_latest(ref)
