"""The predicted-latency bench: its workload and its SLO-attainment arithmetic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from epp.bench.client import PhaseResult, RequestResult
from epp.bench.latency import (
    ROUTERS,
    LatencyBenchSettings,
    build_workload,
    keep_predictor_states,
    latency_config,
    prediction_mape,
    prompt_tokens,
    scaled,
    summarize,
)
from epp.bench.routers import CONFIG_DIR
from epp.bench.workloads import WorkloadParams, latency_slo, pod_profile
from epp.headers import SLO_TPOT, SLO_TTFT


def test_workload_is_deterministic_with_slos_on_half_and_long_prefills() -> None:
    params = WorkloadParams(rate=4.0, count=600, duration_s=150.0, seed=3, nonce="t")
    a, b = latency_slo(params), latency_slo(params)
    assert [r.messages for r in a.requests] == [r.messages for r in b.requests]
    n = len(a.requests)
    with_slo = sum(1 for r in a.requests if SLO_TTFT in r.headers and SLO_TPOT in r.headers)
    assert 0.42 < with_slo / n < 0.58
    tokens = prompt_tokens(a)
    long = [t for r, t in zip(a.requests, tokens, strict=True) if r.session.startswith("long/")]
    assert 0.06 < len(long) / n < 0.14
    # 8k-30k tokens as the pods count them (the simulator's tokenizer and chat template), within
    # 2%: at 5 characters per token they were 10k-37k.
    assert all(7_840 <= t <= 30_600 for t in long)
    assert min(long) < 9_000 and max(long) > 29_000


def test_prompt_tokens_are_what_the_simulated_pod_counts() -> None:
    """The bench's load is prompt tokens per second: the count must be the pod's own, not an
    estimate (a characters-per-token estimate put the "90%" load at 114%)."""
    from epp.sim.config import SimPodConfig
    from epp.tokenization.factory import load_prompt_tokenizer
    from epp.tokenization.prompt import ChatPrompt

    pod = load_prompt_tokenizer(SimPodConfig().tokenizer)  # the tokenizer a bench pod runs with
    w = latency_slo(WorkloadParams(rate=2.0, count=60, duration_s=30.0, seed=7, nonce="p"))
    expected = [len(pod.chat_ids(ChatPrompt.from_body({"model": "m", "messages": r.messages}))) for r in w.requests]
    assert prompt_tokens(w) == expected


def test_the_offered_load_is_the_asked_share_of_capacity() -> None:
    settings = LatencyBenchSettings()
    for load in (0.7, 0.9):
        w, _ = build_workload(settings, load, 60.0, 1, "x")
        offered = sum(prompt_tokens(w)) / 60.0 / settings.capacity_tokens_per_s()
        assert load * 0.95 < offered < load * 1.1  # Poisson: the count in 60 s varies a few %
    assert pod_profile("latency-slo") == {0: 2.0}


def test_rate_follows_the_load_and_slos_scale_with_time() -> None:
    settings = LatencyBenchSettings()
    w70, r70 = build_workload(settings, 0.7, 60.0, 1, "x")
    _, r90 = build_workload(settings, 0.9, 60.0, 1, "x")
    assert r90 / r70 == pytest.approx(0.9 / 0.7, rel=0.1)
    fast = scaled(w70, 0.5)
    for slow_req, fast_req in zip(w70.requests, fast.requests, strict=True):
        if SLO_TTFT in slow_req.headers:
            assert float(fast_req.headers[SLO_TTFT]) == float(slow_req.headers[SLO_TTFT]) * 0.5


def test_attainment_counts_both_targets_and_errors_as_misses() -> None:
    w = latency_slo(WorkloadParams(rate=2.0, count=40, duration_s=100.0, seed=5, nonce="s"))
    results = []
    for r in w.requests:
        res = RequestResult(r.index, status=200, sent=True, e2e_s=1.0, pod="vllm-1")
        slo = float(r.headers.get(SLO_TTFT, "1000")) / 1000
        # Alternate: meets both / misses TTFT / misses TPOT / error.
        case = r.index % 4
        res.ttft_s = slo * (0.5 if case != 1 else 2.0)
        tpot = float(r.headers.get(SLO_TPOT, "100")) / 1000
        res.token_gaps_s = [tpot * (0.5 if case != 2 else 3.0)] * 4
        if case == 3:
            res.error, res.status = "HTTP 429", 429
        results.append(res)
    row = summarize(ROUTERS["epp-latency"], 0.7, 2.0, w, PhaseResult(results, 10.0), 1.0, "vllm-0")
    slo_cases = [r.index % 4 for r in w.requests if r.headers]
    assert row.slo_requests == len(slo_cases)
    assert row.slo_met == slo_cases.count(0)
    assert row.attainment == pytest.approx(slo_cases.count(0) / len(slo_cases))
    assert row.slow_pod_share == 0.0
    assert not math.isnan(row.ttft_p90_chat)


def test_latency_config_variant_keeps_its_plugins_and_gets_the_state_file(tmp_path: Path) -> None:
    """--latency-config: a variant of the profile is run as written, with the bench's state
    file and save interval set on its producer; a file without the producer, or a missing
    one, is refused with the option's name."""
    variant = tmp_path / "variant.yaml"
    variant.write_text((CONFIG_DIR / "epp-latency.yaml").read_text().replace(
        "withoutSLO: latency}", "withoutSLO: latency, queueHarmWeight: 0.5}"))
    state = tmp_path / "state.json"
    out = yaml.safe_load(latency_config(tmp_path / "run", "x.yaml", state, source=variant).read_text())
    plugins = {p["type"]: p.get("parameters") for p in out["plugins"]}
    assert plugins["latency-scorer"]["queueHarmWeight"] == 0.5
    assert plugins["predicted-latency-producer"]["stateFile"] == str(state.resolve())
    assert plugins["predicted-latency-producer"]["scoreRequestsWithoutSLO"] is True
    other = tmp_path / "other.yaml"
    other.write_text("plugins:\n- type: queue-scorer\n")
    with pytest.raises(ValueError, match="predicted-latency-producer"):
        latency_config(tmp_path / "run", "y.yaml", state, source=other)
    with pytest.raises(ValueError, match="--latency-config"):
        LatencyBenchSettings(latency_config=tmp_path / "missing.yaml").validate()


def test_epp_workers_reach_both_epp_rows_and_must_be_positive() -> None:
    assert LatencyBenchSettings().row().epp_args == []
    settings = LatencyBenchSettings(epp_workers=2)
    settings.validate()
    assert list(settings.row().epp_args) == ["--workers", "2"]
    with pytest.raises(ValueError, match="--epp-workers"):
        LatencyBenchSettings(epp_workers=0).validate()


def test_epp_max_streams_reaches_envoy_and_must_be_positive(tmp_path: Path) -> None:
    from epp.bench.latency import ROUTERS
    from epp.bench.routers import _stack_config

    settings = LatencyBenchSettings(epp_workers=2, epp_max_streams=2)
    settings.validate()
    spec = ROUTERS["epp-default"]
    assert _stack_config(spec, settings.row(), tmp_path).epp_max_concurrent_streams == 2
    assert _stack_config(spec, LatencyBenchSettings().row(), tmp_path).epp_max_concurrent_streams == 32
    with pytest.raises(ValueError, match="--epp-max-streams"):
        LatencyBenchSettings(epp_max_streams=0).validate()


def test_decisions_by_worker_reads_the_merged_metrics_of_the_workers() -> None:
    from prometheus_client.exposition import generate_latest

    from epp.bench.latency import decisions_by_worker
    from epp.observability.metrics import EPPMetrics
    from epp.server.peers import merge_expositions

    texts = {}
    for worker, decisions in ((0, 3), (1, 5)):
        metrics = EPPMetrics()
        metrics.scheduler_requests.labels("default", "success").inc(decisions)
        metrics.scheduler_requests.labels("default", "failure").inc(1)
        texts[worker] = generate_latest(metrics.registry).decode()
    assert decisions_by_worker(merge_expositions(texts).decode()) == {"0": 4, "1": 6}
    assert decisions_by_worker(texts[0]) == {}  # one worker: no worker label


def test_the_predictor_states_are_kept_beside_the_result_and_give_the_same_mape(tmp_path: Path) -> None:
    """The run directory is emptied by the next run: the states the MAPE comes from are kept,
    gzipped, beside the result, and read back to the same numbers."""
    run_dir, out = tmp_path / "run", tmp_path / "out"
    run_dir.mkdir()
    out.mkdir()
    errors = {"default/vllm-0": [[1.0, "ttft", 0.5, 0.4], [2.0, "ttft", 0.3, 0.3], [3.0, "tpot", 0.02, 0.04]],
              "default/vllm-1": [[1.0, "ttft", 2.0, 1.0]]}
    (run_dir / "warm-state.json").write_text(json.dumps({"version": 2, "errors": errors}))
    (run_dir / "state-0.9.json").write_text(json.dumps({"version": 2, "errors": {}}))
    (run_dir / "warmup.yaml").write_text("plugins: []\n")
    result = out / "latency-2026-12-05T0800-abc1234.json"
    kept = keep_predictor_states(run_dir, result)
    assert [k.name for k in kept] == ["latency-2026-12-05T0800-abc1234.state-0.9.json.gz",
                                      "latency-2026-12-05T0800-abc1234.warm-state.json.gz"]
    assert prediction_mape(kept[1]) == prediction_mape(run_dir / "warm-state.json")
    ttft, counts = prediction_mape(kept[1])["ttft"]
    assert counts == {"default/vllm-0": 2, "default/vllm-1": 1}
    assert ttft["default/vllm-1"] == 1.0 and math.isclose(ttft["default/vllm-0"], 0.125)
    assert prediction_mape(kept[1])["tpot"][0] == {"default/vllm-0": 0.5}
