import math
from pathlib import Path

import pytest

from epp.bench.machine import MachineFacts
from epp.bench.overhead import DecisionLatency, OverheadResult, PoolOverhead
from epp.bench.report import RunInfo, losses
from epp.bench.results import load_results, save_results
from epp.bench.runner import PhaseOutcome, PhasePlan, RouterPhaseResult
from epp.bench.stats import Distribution
from epp.bench.workloads import WorkloadParams


def _row(key: str, p50: float, ours: bool) -> RouterPhaseResult:
    d = Distribution.of([p50, p50 * 2])
    return RouterPhaseResult(key, key, ours, "no-sharing", 6.0, sent=2, ok=2, ttft=d, itl=Distribution.of([]),
                             e2e=d, prefix_hit_rate=math.nan, router_warnings=["WARN x (x1)"])


def test_results_round_trip_including_nan(tmp_path: Path) -> None:
    plan = PhasePlan("no-sharing", WorkloadParams(rate=6.0, count=2, duration_s=1.0, nonce="n"))
    outcome = PhaseOutcome(plan, "No sharing", 2, 1500.0, 0.0, [_row("envoy-rr", 0.1, False), _row("epp", 0.2, True)])
    d = Distribution.of([0.001])
    overhead = OverheadResult([PoolOverhead(4, d, d, d, d, 64, 1.0, 2.0, 0, 300.0, 1.0, fixed_idle_cpu_percent=9.0)],
                              [DecisionLatency(4, 1.0, 2.0, 1.5)], 2000)
    info = RunInfo("python -m epp bench", "today", MachineFacts("cpu", 2, "py", "envoy", "vr", "linux", "0"),
                   False, 4, 0.5, pod_profile="p", notes=["n"])
    path = tmp_path / "results.json"
    save_results(path, [outcome], overhead, info)
    outcomes, overhead2, info2 = load_results(path)
    assert outcomes[0].rows[0].ttft == outcome.rows[0].ttft  # NaN-free fields compare exactly
    assert math.isnan(outcomes[0].rows[0].itl.p50) and outcomes[0].rows[0].itl.count == 0
    assert outcomes[0].plan == plan
    assert math.isnan(outcomes[0].rows[1].prefix_hit_rate)
    assert outcomes[0].rows[1].router_warnings == ["WARN x (x1)"]
    assert overhead2 == overhead
    assert info2.machine == info.machine and info2.time_scale == 0.5 and info2.notes == ["n"]


def test_loading_garbage_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"phases": []}')
    with pytest.raises(ValueError, match=r"bad\.json"):
        load_results(path)


def test_losses_lists_phases_where_a_peer_beats_every_epp_variant() -> None:
    plan = PhasePlan("no-sharing", WorkloadParams(rate=6.0, count=2, duration_s=1.0))
    lost = PhaseOutcome(plan, "No sharing", 2, 1500.0, 0.0, [_row("rr", 0.1, False), _row("epp", 0.2, True)])
    won = PhaseOutcome(plan, "Won", 2, 1500.0, 0.0, [_row("rr", 0.3, False), _row("epp", 0.2, True)])
    lines = losses([lost, won])
    assert len(lines) == 2  # p50 and p99 of the lost phase only
    assert all(line.startswith("No sharing @ 6 req/s") for line in lines)


def test_samples_spread_and_long_prompts_survive_the_round_trip(tmp_path: Path) -> None:
    from epp.bench.aggregate import aggregate_runs
    from epp.bench.overhead import LongPromptOverhead

    plan = PhasePlan("mixed", WorkloadParams(rate=6.0, count=2, duration_s=1.0), ("envoy-rr",))
    samples = [_row("envoy-rr", 0.1 * (i + 1), False) for i in range(3)]
    for i, s in enumerate(samples):
        s.repeat = i
    outcome = PhaseOutcome(plan, "Mixed", 2, 1500.0, 0.2, [aggregate_runs(samples)], samples)
    d = Distribution.of([0.01])
    longs = [LongPromptOverhead(4, 20, 220_000, d, d, 0, [1.0, 2.0], 90.0, 80.0, 1500.0)]
    overhead = OverheadResult([], [], 2000, "", longs, 3, 3.0)
    info = RunInfo("c", "d", MachineFacts("cpu", 2, "py", "e", "v", "l", "0"), False, 4, 0.5, commit="abc",
                   settings={"runs per cell": "3"}, raw_results="bench-results/x.json")
    path = tmp_path / "r.json"
    save_results(path, [outcome], overhead, info)
    outcomes, overhead2, info2 = load_results(path)
    assert outcomes[0].plan == plan  # the router subset too
    assert [s.repeat for s in outcomes[0].samples] == [0, 1, 2]
    assert outcomes[0].rows[0].runs == 3 and outcomes[0].rows[0].spread["ttft.p50"] == pytest.approx([0.15, 0.45])
    assert all(math.isnan(v) for v in outcomes[0].rows[0].spread["prefix_hit_rate"])
    assert overhead2 == overhead
    assert info2.commit == "abc" and info2.settings == {"runs per cell": "3"}
