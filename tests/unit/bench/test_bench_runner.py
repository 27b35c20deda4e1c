from pathlib import Path

import pytest
import yaml

from epp.bench.client import PhaseResult, RequestResult
from epp.bench.routers import (
    CONFIG_DIR,
    ROUTERS,
    RouterSpec,
    RowSettings,
    _stack_config,
    epp_config_path,
    router_by_key,
    unavailable_reason,
)
from epp.bench.runner import PhasePlan, log_warnings, parse_prefix_counters, summarize
from epp.bench.workloads import WorkloadParams
from epp.localstack.stack import REPO

METRICS = """# HELP vllm:prefix_cache_hits Prefix cache hits
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 1200.0
vllm:prefix_cache_hits_created{engine="0",model_name="m"} 1.7e9
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 2000.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 1000.0
vllm:num_requests_running{model_name="m"} 3.0
"""


def test_prefix_counters_sum_series_and_skip_created() -> None:
    assert parse_prefix_counters(METRICS) == (1200.0, 3000.0)
    assert parse_prefix_counters("") == (0.0, 0.0)


def test_log_warnings_are_distinct_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "vllm-router.log"
    log.write_text("\x1b[2m2026\x1b[0m \x1b[33m WARN\x1b[0m sub: src/x.rs: 427: KV event must be a tagged map\n" * 3
                   + "2026 INFO started\n2026 ERROR server: boom\n")
    assert log_warnings(log) == ["WARN KV event must be a tagged map (x3)", "ERROR boom (x1)"]
    assert log_warnings(tmp_path / "missing.log") == []


def test_summarize_converts_to_model_seconds_and_counts_errors() -> None:
    ok = [RequestResult(i, status=200, sent=True, ttft_s=0.05, e2e_s=0.5, token_gaps_s=[0.01, 0.01],
                        output_tokens=3, pod="vllm-0" if i < 3 else "vllm-1") for i in range(4)]
    bad = RequestResult(9, status=503, sent=True, error="HTTP 503: no endpoint")
    unsent = RequestResult(10, error="deadline")
    spec = router_by_key("envoy-rr")
    plan = PhasePlan("shared-prefix", WorkloadParams(rate=2, count=10, duration_s=5))
    s = summarize(spec, plan, PhaseResult([*ok, bad, unsent], wall_s=1.0), time_scale=0.5, hit_rate=0.4, pods=4)
    assert (s.sent, s.ok, s.errors) == (5, 4, 2)
    assert abs(s.ttft.p50 - 0.1) < 1e-9 and abs(s.itl.p50 - 0.02) < 1e-9
    assert abs(s.output_tokens_per_s - 6.0) < 1e-9  # 12 tokens in 2 model seconds
    assert s.pod_share_max == 0.75 and s.prefix_hit_rate == 0.4
    assert "HTTP 503: no endpoint" in s.error_examples


def test_router_table_is_complete_and_keys_unique() -> None:
    keys = [r.key for r in ROUTERS]
    assert len(keys) == len(set(keys))
    assert {"envoy-rr", "envoy-lr", "vr-rr", "vr-p2c", "vr-cache", "vr-kv", "epp-default", "epp-gie", "epp-load",
            "epp-prefix", "epp-all", "epp-precise", "epp-precise-spec", "epp-rr", "epp-rr-scrape1s",
            "epp-default-scrape200ms", "epp-speedblind", "epp-steptime"} == set(keys)
    for spec in ROUTERS:
        if spec.kind == "epp":
            path = epp_config_path(spec)
            if spec.key in ("epp-default", "epp-default-scrape200ms"):
                assert path is None  # the embedded default: no --config
            elif spec.key == "epp-gie":
                assert path is not None and path.name == "gie-default.yaml" and path.exists()
            else:
                assert path is not None and path.exists()
        assert unavailable_reason(spec) is None or spec.kind in ("vllm-router", "epp")


def test_speedblind_row_is_the_embedded_default_without_speed_awareness() -> None:
    # The comparison row must not drift from the default it stands for.
    default = yaml.safe_load((REPO / "epp/config/default-config.yaml").read_text())
    blind = yaml.safe_load((CONFIG_DIR / "epp-speedblind.yaml").read_text())
    prefill = [p for p in default["plugins"] if p["type"] == "prefill-load-scorer"]
    assert prefill and prefill[0]["parameters"]["speedAware"] is True
    prefill[0]["parameters"]["speedAware"] = False
    assert blind == default


def test_steptime_row_is_the_embedded_default_with_the_engine_latency_signal() -> None:
    default = yaml.safe_load((REPO / "epp/config/default-config.yaml").read_text())
    steptime = yaml.safe_load((CONFIG_DIR / "epp-steptime.yaml").read_text())
    prefill = [p for p in default["plugins"] if p["type"] == "prefill-load-scorer"]
    assert "engineLatency" not in prefill[0]["parameters"]  # the default: off
    prefill[0]["parameters"]["engineLatency"] = True
    assert steptime == default


def test_stack_config_gives_cold_bench_pods_and_only_epp_rows_start_the_epp(tmp_path: Path) -> None:
    row = RowSettings(pods=3, time_scale=0.5, run_dir=tmp_path, gpu_blocks=1000, slowdown=2.0)
    epp = _stack_config(router_by_key("epp-prefix"), row, tmp_path)
    peer = _stack_config(router_by_key("vr-cache"), row, tmp_path)
    assert epp.with_epp and epp.with_envoy and epp.epp_config is not None
    assert not peer.with_epp and not peer.with_envoy
    for cfg in (epp, peer):
        assert cfg.pods == 3 and cfg.time_scale == 0.5 and cfg.ports_free
        args = list(cfg.sim_args)
        assert "--kv-events-bind" in args
        assert args[args.index("--num-gpu-blocks") + 1] == "1000"
        assert args[args.index("--slowdown") + 1] == "2.0"
        assert not cfg.pod_sim_args
    assert _stack_config(router_by_key("epp-default"), row, tmp_path).epp_config is None


def test_heterogeneous_row_slows_down_one_pod_only(tmp_path: Path) -> None:
    row = RowSettings(pods=4, run_dir=tmp_path, slowdown=4.0, pod_slowdown={0: 2.0})
    cfg = _stack_config(router_by_key("envoy-rr"), row, tmp_path)
    assert dict(cfg.pod_sim_args) == {0: ["--slowdown", "8"]}  # after sim_args: the last --slowdown wins


def test_a_stack_that_fails_to_start_is_retried_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from epp.bench import runner
    from epp.bench.runner import BenchPlan, RouterPhaseResult, run_benchmark
    from epp.localstack.stack import StackError

    calls: list[str] = []

    def flaky(spec: RouterSpec, plan: PhasePlan, workload: object, bench: object, tag: str) -> RouterPhaseResult:
        calls.append(tag)
        if spec.key == "envoy-rr" and len(calls) == 1:
            raise StackError("envoy-lb exited with code 1: address already in use")
        if spec.key == "envoy-lr":
            raise StackError("still broken")
        return RouterPhaseResult(spec.key, spec.label, spec.ours, plan.workload, plan.params.rate, ok=1)

    monkeypatch.setattr(runner, "run_router_phase", flaky)
    plan = PhasePlan("no-sharing", WorkloadParams(rate=5, count=3, duration_s=5))
    bench = BenchPlan([plan], [router_by_key("envoy-rr"), router_by_key("envoy-lr")], RowSettings())
    outcome = run_benchmark(bench, progress=lambda _: None)[0]
    rr, lr = outcome.rows
    assert rr.ok == 1 and not rr.skipped
    assert lr.skipped.startswith("failed: StackError: still broken")
    assert len(calls) == 4  # rr twice, lr twice


def test_each_cell_runs_repeats_times_with_its_own_seed_and_rows_are_medians(monkeypatch: pytest.MonkeyPatch) -> None:
    from epp.bench import runner
    from epp.bench.runner import BenchPlan, RouterPhaseResult, run_benchmark
    from epp.bench.stats import Distribution

    seen: list[tuple[str, int, str]] = []

    def fake(spec: RouterSpec, plan: PhasePlan, workload: object, bench: object, tag: str) -> RouterPhaseResult:
        seed = workload.params.seed  # type: ignore[attr-defined]
        seen.append((spec.key, seed, tag))
        ttft = Distribution.of([0.1 * (seed + 1)])
        return RouterPhaseResult(spec.key, spec.label, spec.ours, plan.workload, plan.params.rate, sent=1, ok=1,
                                 ttft=ttft)

    monkeypatch.setattr(runner, "run_router_phase", fake)
    plans = [PhasePlan("no-sharing", WorkloadParams(rate=5, count=3, duration_s=5, seed=1), ("envoy-rr",)),
             PhasePlan("mixed", WorkloadParams(rate=5, count=3, duration_s=5, seed=1))]
    bench = BenchPlan(plans, [router_by_key("envoy-rr"), router_by_key("vr-rr")], RowSettings(), repeats=3)
    assert bench.cells() == (1 + 2) * 3
    saved: list[int] = []
    outcomes = run_benchmark(bench, progress=lambda _: None, on_phase=lambda done: saved.append(len(done)))
    assert saved == [1, 2, 2, 2, 2, 2]  # after every phase run
    first, second = outcomes
    assert [s.repeat for s in first.samples] == [0, 1, 2]
    # Round by round: run 1 of both phases, then run 2 ...; run r uses seed + r.
    assert [(key, seed) for key, seed, _ in seen[:4]] == [("envoy-rr", 1), ("envoy-rr", 1), ("vr-rr", 1),
                                                          ("envoy-rr", 2)]
    assert len(first.rows) == 1 and first.rows[0].runs == 3
    assert first.rows[0].ttft.p50 == pytest.approx(0.3)  # median of 0.2, 0.3, 0.4
    assert [r.router for r in second.rows] == ["envoy-rr", "vr-rr"]
    assert len({tag for _, _, tag in seen}) == len(seen)  # every run has its own log directory


def test_a_passed_deadline_stops_new_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    from epp.bench import runner
    from epp.bench.runner import BenchPlan, run_benchmark

    monkeypatch.setattr(runner, "run_router_phase", lambda *a: pytest.fail("no run may start"))
    plan = PhasePlan("no-sharing", WorkloadParams(rate=5, count=3, duration_s=5))
    bench = BenchPlan([plan], [router_by_key("envoy-rr")], RowSettings(), repeats=3)
    assert run_benchmark(bench, progress=lambda _: None, deadline=0.0) == []


def test_a_deadline_after_the_first_round_keeps_every_phase_with_one_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from epp.bench import runner
    from epp.bench.runner import BenchPlan, RouterPhaseResult, run_benchmark

    def fake(spec: RouterSpec, plan: PhasePlan, workload: object, bench: object, tag: str) -> RouterPhaseResult:
        return RouterPhaseResult(spec.key, spec.label, spec.ours, plan.workload, plan.params.rate, sent=1, ok=1)

    monkeypatch.setattr(runner, "run_router_phase", fake)
    plans = [PhasePlan(w, WorkloadParams(rate=5, count=3, duration_s=5)) for w in ("no-sharing", "mixed")]
    bench = BenchPlan(plans, [router_by_key("envoy-rr")], RowSettings(), repeats=3)
    deadline = [time.monotonic() + 3600]

    def cut_after_first_round(done: list[object]) -> None:
        if len(done) == 2:
            deadline[0] = 0.0

    # The deadline is read when each phase run starts; move it once both phases ran once.
    monkeypatch.setattr(runner.time, "monotonic", lambda: 1.0 if deadline[0] else 2.0)
    outcomes = run_benchmark(bench, progress=lambda _: None, on_phase=cut_after_first_round, deadline=1.5)
    assert [o.plan.workload for o in outcomes] == ["no-sharing", "mixed"]
    assert all(o.rows[0].runs == 1 for o in outcomes)
