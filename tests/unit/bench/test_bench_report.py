import math
from pathlib import Path

from epp.bench.machine import MachineFacts
from epp.bench.overhead import DecisionLatency, LongPromptOverhead, OverheadResult, PoolOverhead
from epp.bench.report import (
    OVERHEAD_BEGIN,
    OVERHEAD_END,
    RunInfo,
    all_checks,
    best_peer,
    fmt_spread_ms,
    overhead_markdown,
    phase_table,
    plot_overhead,
    plot_routing,
    render_report,
    replace_overhead_section,
    table,
    targets_markdown,
)
from epp.bench.runner import PhaseOutcome, PhasePlan, RouterPhaseResult
from epp.bench.stats import Distribution
from epp.bench.workloads import WorkloadParams

MACHINE = MachineFacts("Test CPU", 2, "CPython 3.11", "1.40.0", "0.1.17", "Linux", "0.1 0.1 0.1")


def info() -> RunInfo:
    return RunInfo("python -m epp bench --quick", "2026-01-01 00:00 UTC", MACHINE, True, 4, 0.5)


def row(key: str, ttft_s: float, ours: bool = False, hit: float = 0.5, errors: int = 0) -> RouterPhaseResult:
    d = Distribution.of([ttft_s, ttft_s])
    return RouterPhaseResult(key, key.upper(), ours, "shared-prefix", 6.0, sent=10, ok=10 - errors, errors=errors,
                             ttft=d, itl=d, e2e=d, output_tokens_per_s=100.0, prefix_hit_rate=hit,
                             pod_share_max=0.25)


def outcome(rows: list[RouterPhaseResult], workload: str = "shared-prefix", rate: float = 6.0) -> PhaseOutcome:
    plan = PhasePlan(workload, WorkloadParams(rate=rate, count=10, duration_s=5))
    return PhaseOutcome(plan, "Shared", 10, 2000.0, 0.8, rows)


def overhead() -> OverheadResult:
    d1, d2 = Distribution.of([0.0004, 0.0005]), Distribution.of([0.0012, 0.0014])
    pools = [PoolOverhead(p, d1, d2, d1, d2, 64, 5000.0, 2000.0, 0, 300.0, 2.0, [0.85, 0.8, 0.9],
                          [3333.0, 3000.0, 3500.0], [2.0, 1.5, 2.5], 3, 12.0, [12.0]) for p in (4, 64)]
    longs = [LongPromptOverhead(4, c, 220_000, Distribution.of([0.010]), Distribution.of([0.030]), 0,
                                [20.0, 19.0, 22.0]) for c in (20, 150)]
    return OverheadResult(pools, [DecisionLatency(4, 20.0, 40.0, 22.0)], 2000, "", longs, 3, 3.0)


def test_table_has_header_separator_and_rows() -> None:
    text = table(["a", "b"], [["1", "2"], ["3", "4"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |", "| 3 | 4 |"]


def test_best_peer_ignores_our_rows_and_failed_peers() -> None:
    rows = [row("envoy-rr", 0.3), row("vr-cache", 0.2, errors=3), row("vr-p2c", 0.25), row("epp", 0.1, ours=True)]
    peer = best_peer(rows)
    assert peer is not None and peer.router == "vr-p2c"  # vr-cache had errors


def test_phase_table_has_one_line_per_router_and_ratio_column() -> None:
    rows = [row("envoy-rr", 0.4), row("epp-prefix", 0.1, ours=True),
            RouterPhaseResult("epp-precise", "PRECISE", True, "shared-prefix", 6.0, skipped="not built")]
    text = phase_table(outcome(rows))
    lines = text.splitlines()
    assert len(lines) == 2 + 3
    assert "vs best peer (ENVOY-RR)" in lines[0]
    assert "0.25x" in lines[3]  # 100 ms vs 400 ms
    assert "**EPP-PREFIX**" in lines[3]
    assert "skipped: not built" in lines[4]


def test_report_contains_every_section_and_target_verdicts() -> None:
    rows = [row("envoy-rr", 0.4, hit=0.3), row("vr-rr", 0.5, hit=0.3), row("vr-cache", 0.2, hit=0.8),
            row("epp-default", 0.1, ours=True, hit=0.78)]
    run_info = info()
    run_info.settings = {"runs per cell": "3 (run r uses seed 1 + r)", "time scale": "0.5"}
    run_info.raw_results = "bench-results/2026-01-01-0000-abc1234.json"
    run_info.commit = "abc1234"
    doc = render_report([outcome(rows)], overhead(), run_info, ["bench-ttft-vs-rate.png"])
    for heading in ("# Benchmarks", "## Machine", "## Settings of this run", "## Setup", "## Targets (issue 10)",
                    "## Results per workload", "## EPP overhead", "Test CPU", "python -m epp bench --quick",
                    "- runs per cell: 3 (run r uses seed 1 + r)", "at commit `abc1234`",
                    "(bench-results/2026-01-01-0000-abc1234.json)"):
        assert heading in doc, heading
    assert "envoy-rr 400.0 / 100.0 ms = 4.00x; vr-rr 500.0 / 100.0 ms = 5.00x | met" in doc
    assert "200.0 / 100.0 ms = 2.00x | met" in doc  # vs cache_aware
    assert "97.5% met" in doc  # 0.78 of 0.8
    assert "**0.850** / 0.899" in doc  # added latency p50/p99 (ms)
    assert doc.count(OVERHEAD_BEGIN) == 1 and doc.count(OVERHEAD_END) == 1


def _target_outcomes() -> list[PhaseOutcome]:
    ns6 = outcome([row("envoy-rr", 0.40), row("envoy-lr", 0.30), row("vr-rr", 0.5),
                   row("epp-default", 0.31, ours=True)], "no-sharing", 6.0)
    ns12 = outcome([row("envoy-rr", 0.40), row("envoy-lr", 0.30), row("vr-rr", 0.5),
                    row("epp-default", 0.40, ours=True)], "no-sharing", 12.0)
    het = outcome([row("envoy-rr", 0.8), row("vr-rr", 0.9), row("epp-default", 0.5, ours=True)], "heterogeneous")
    shared = outcome([row("envoy-rr", 0.4), row("vr-rr", 0.5), row("vr-cache", 0.2), row("vr-kv", 0.09),
                      row("epp-default", 0.1, ours=True)])
    return [ns6, ns12, het, shared]


def test_every_issue_10_target_is_judged_with_its_ratio() -> None:
    checks = all_checks(_target_outcomes(), overhead())
    within = [c for c in checks if c.target.startswith("epp-default TTFT p50 and p99")]
    assert [(c.where, round(c.value, 3), c.met) for c in within] == [
        ("no-sharing @ 6 req/s", 1.033, True),  # 310 vs the best baseline (envoy-lr 300 ms)
        ("no-sharing @ 12 req/s", 1.333, False),
        ("heterogeneous @ 6 req/s", 0.625, True),
        ("shared-prefix @ 6 req/s", 0.25, True),
    ]
    het = next(c for c in checks if c.target.startswith("heterogeneous pool"))
    assert round(het.value, 2) == 1.6 and het.met  # the better round robin: 800 / 500 ms
    ahead = {c.target: c for c in checks if "ahead of" in c.target}
    assert ahead["shared prefix: ahead of vr-cache (its TTFT p50 / ours > 1)"].met
    assert not ahead["shared prefix: ahead of vr-kv (its TTFT p50 / ours > 1)"].met  # 90 ms beats 100 ms
    overhead_targets = [c for c in checks if c.target.startswith(("overhead", "idle"))]
    assert len(overhead_targets) == 4 and all(c.met for c in overhead_targets)


def test_missed_targets_are_named_in_the_summary() -> None:
    text = targets_markdown(_target_outcomes(), overhead())
    assert "2 **MISSED**" in text
    assert "at no-sharing @ 12 req/s (p50 400.0 vs envoy-lr 300.0 ms = 1.33x)" in text
    assert "| **MISSED** |" in text


def test_spread_is_printed_next_to_the_median() -> None:
    r = row("envoy-rr", 0.4)
    r.runs, r.spread = 3, {"ttft.p50": [0.35, 0.45]}
    assert fmt_spread_ms(r, "ttft.p50") == "400.0 (350.0-450.0)"
    r.runs = 1
    assert fmt_spread_ms(r, "ttft.p50") == "400.0"


def test_overhead_section_is_replaced_in_place() -> None:
    old = f"# Benchmarks\n\nrouting\n\n{OVERHEAD_BEGIN}\nold numbers\n{OVERHEAD_END}\n\ntrailer\n"
    new_section = overhead_markdown(overhead(), info())
    doc = replace_overhead_section(old, new_section)
    assert "old numbers" not in doc and "routing" in doc and "trailer" in doc
    assert doc.count(OVERHEAD_BEGIN) == 1
    appended = replace_overhead_section("# Benchmarks\n", new_section)
    assert appended.startswith("# Benchmarks\n") and OVERHEAD_END in appended


def test_overhead_targets_are_judged() -> None:
    text = overhead_markdown(overhead(), info())
    assert "0.850 ms (median of 3, runs 0.800-0.900), **met**" in text  # added p50 850 us < 1 ms
    assert "3,333 (median of 3, runs 3,000-3,500), **met**" in text
    assert "20.0 ms (median of 3, runs 19.0-22.0), **met**" in text  # long prompts at c=20
    assert "2.0% (median of 3, runs 1.5-2.5%; with a fixed 50 ms interval 12.0%), **met**" in text  # 64 idle pods
    assert "| 4 | 150 | 220 KB |" in text


def test_nan_cells_render_as_dashes() -> None:
    r = row("envoy-rr", 0.1)
    r.prefix_hit_rate = math.nan
    assert "| - |" in phase_table(outcome([r]))


def test_plots_are_written(tmp_path: Path) -> None:
    rows = [row("envoy-rr", 0.4), row("epp-prefix", 0.1, ours=True)]
    names = plot_routing([outcome(rows, rate=3.0), outcome(rows, rate=6.0), outcome(rows, "lora-mix")], tmp_path)
    assert names == ["bench-ttft-vs-rate.png", "bench-hit-rate.png", "bench-workloads.png"]
    assert plot_overhead(overhead(), tmp_path) == "bench-overhead.png"
    for name in [*names, "bench-overhead.png"]:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_targets_whose_cells_did_not_run_are_listed_as_not_measured() -> None:
    ns = outcome([row("envoy-rr", 0.4), row("epp-default", 0.3, ours=True)], "no-sharing", 3.0)
    checks = all_checks([ns], None)
    unmeasured = [c for c in checks if math.isnan(c.value)]
    assert len(unmeasured) == 7  # everything but the baseline target
    assert all(c.verdict == "not measured" and c.measured == "its cells did not run" for c in unmeasured)
    assert "1 of 8 checks met, 0 **MISSED**, 7 not measured" in targets_markdown([ns], None)


def test_each_phase_states_its_own_length() -> None:
    from epp.bench.report import routing_markdown

    short = outcome([row("envoy-rr", 0.3), row("epp", 0.2, ours=True)], "no-sharing")
    long = PhaseOutcome(PhasePlan("heterogeneous", WorkloadParams(rate=6.0, count=200, duration_s=30)),
                        "Heterogeneous", 180, 1500.0, 0.01, [row("envoy-rr", 0.3), row("epp", 0.2, ours=True)])
    text = routing_markdown([short, long])
    assert "5 model seconds of arrivals per run, 10 requests" in text
    assert "30 model seconds of arrivals per run, 180 requests" in text
