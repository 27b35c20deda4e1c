"""The `epp bench` plans: what `make bench` and `make bench-quick` run."""

import argparse

import pytest

from epp.bench.cli import (
    FULL_PHASE_SECONDS,
    FULL_PHASE_SECONDS_BY_WORKLOAD,
    FULL_REPEATS,
    add_parser,
    build_plan,
    plan_settings,
    raw_results_name,
)
from epp.bench.machine import MachineFacts
from epp.bench.report import RunInfo


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


def test_full_plan_covers_issue_10_workloads_with_three_runs() -> None:
    plan = build_plan(parse())
    keys = [p.key for p in plan.phases]
    for key in ("no-sharing@3", "no-sharing@6", "no-sharing@9", "no-sharing@12", "mixed@6", "heterogeneous@6"):
        assert key in keys
    assert any(k.startswith("shared-prefix@") for k in keys)
    assert plan.repeats == FULL_REPEATS == 3
    for phase in plan.phases:
        routers = {r.key for r in plan.routers_of(phase)}
        assert {"envoy-rr", "envoy-lr", "vr-rr", "epp-default", "epp-gie"} <= routers, phase.key
        if phase.workload == "shared-prefix":
            assert {"vr-cache", "vr-kv"} <= routers
    # The existing variants still run somewhere.
    everywhere = {r.key for p in plan.phases for r in plan.routers_of(p)}
    assert {"vr-p2c", "epp-load", "epp-prefix", "epp-all", "epp-precise"} <= everywhere
    # About 35 minutes on 2 cores at ~10 s per cell (startup + arrivals + drain).
    assert plan.cells() * 10 <= 35 * 60


def test_quick_plan_is_one_small_phase_with_every_router() -> None:
    plan = build_plan(parse("--quick"))
    assert [p.key for p in plan.phases] == ["shared-prefix@6"] and plan.repeats == 1
    assert len(plan.routers_of(plan.phases[0])) == len(plan.routers)


def test_explicit_routers_run_on_every_phase_and_bad_values_are_refused() -> None:
    plan = build_plan(parse("--routers", "envoy-rr,epp-default", "--workloads", "mixed", "--repeats", "2"))
    assert [r.key for r in plan.routers_of(plan.phases[0])] == ["envoy-rr", "epp-default"]
    with pytest.raises(ValueError, match="unknown workload"):
        build_plan(parse("--workloads", "nope"))
    with pytest.raises(ValueError, match="--repeats"):
        build_plan(parse("--repeats", "0"))


def test_settings_and_raw_results_name_come_from_the_run() -> None:
    args = parse("--phase-seconds", "7", "--repeats", "2")
    plan = build_plan(args)
    settings = plan_settings(plan, args, 40.0)
    assert settings["runs per cell"].startswith("2 ")
    assert settings["arrivals per phase"].startswith("7 model seconds")
    assert settings["time budget"] == "no new routing run after 40 minutes of routing phases"
    assert settings["order"].startswith("the overhead section first")
    assert plan_settings(plan, parse("--no-overhead"), None)["order"].startswith("routing phases only")
    assert settings["phase mixed@6"] == "envoy-rr, envoy-lr, vr-rr, vr-cache, epp-default, epp-gie"
    info = RunInfo("c", "2026-12-01 04:05 UTC", MachineFacts("", 2, "", "", "", "", ""), False, 4, 0.5,
                   commit="abc1234")
    assert raw_results_name(info) == "bench-results/2026-12-01-0405-abc1234.json"


def test_heterogeneous_phases_are_long_enough_for_a_steady_state_p99() -> None:
    args = parse()
    plan = build_plan(args)
    lengths = {p.workload: p.params.duration_s for p in plan.phases}
    assert lengths["heterogeneous"] == FULL_PHASE_SECONDS_BY_WORKLOAD["heterogeneous"] == 30.0
    assert lengths["no-sharing"] == lengths["mixed"] == FULL_PHASE_SECONDS
    het = next(p for p in plan.phases if p.workload == "heterogeneous")
    assert het.params.rate * het.params.duration_s < het.params.count  # the cap does not cut it short
    # The report states both lengths, from the plan.
    said = plan_settings(plan, args, None)["arrivals per phase"]
    assert said == ("10 model seconds, at most 200 requests, max_tokens 48 "
                    "(heterogeneous: 30 model seconds, at most 200 requests, max_tokens 48)")
    # --phase-seconds applies to every workload alike; --quick keeps its tiny phases.
    args = parse("--phase-seconds", "12")
    assert {p.params.duration_s for p in build_plan(args).phases} == {12.0}
    assert plan_settings(build_plan(args), args, None)["arrivals per phase"].startswith("12 model seconds, ")
    assert {p.params.duration_s for p in build_plan(parse("--quick", "--workloads", "heterogeneous")).phases} \
        == {3.0}
    with pytest.raises(ValueError, match="--phase-seconds"):
        build_plan(parse("--phase-seconds", "-1"))
