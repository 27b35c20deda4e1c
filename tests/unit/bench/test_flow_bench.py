"""`epp bench flow` arithmetic: Jain's index while both tenants are backlogged (the issue's
definition), the whole-run index over max-min fair shares, and the summary's accounting."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from epp.bench.flow import EVICTED, ArmResult, Outcome, backlogged_jain, jain_index, splice_flow_section


def outcomes(tenant: str, served: int, refused: int) -> list[Outcome]:
    return ([Outcome("standard", tenant, 200, 0.1, 0.0, 1.0)] * served
            + [Outcome("standard", tenant, 429, None, 0.0, 1.0)] * refused)


def test_jain_is_one_when_each_gets_its_max_min_fair_share() -> None:
    # 50 served out of demands 80 (heavy) and 20 (light): max-min fair = light 20, heavy 30.
    assert jain_index(outcomes("heavy", 30, 50) + outcomes("light", 20, 0)) == pytest.approx(1.0)


def test_jain_by_hand_when_the_light_tenant_is_starved() -> None:
    # Fair shares as above (30, 20); served heavy 40, light 10 -> x = (4/3, 1/2).
    x = (40 / 30, 10 / 20)
    expected = sum(x) ** 2 / (2 * sum(v * v for v in x))
    assert jain_index(outcomes("heavy", 40, 40) + outcomes("light", 10, 10)) == pytest.approx(expected)
    assert expected < 0.9


def test_summary_counts_every_request_once() -> None:
    outs = [*outcomes("heavy", 3, 2), Outcome("critical", "light", -1, None, 0.0, 9.0),
            Outcome("critical", "light", 0, None, 0.0, 1.0), Outcome("standard", "light", EVICTED, 0.2, 0.0, 1.0)]
    m = ArmResult("x", 1.0, 2.0, 0.1, outs).summary()
    assert (m["sent"], m["ok"], m["rejected"], m["evicted"], m["hung"], m["lost"]) == (8, 3, 2, 1, 1, 1)
    assert math.isnan(m["critical_ttft_p99_s"])  # no critical request was served


def started(cls: str, tenant: str, sent: float, start: float) -> Outcome:
    return Outcome(cls, tenant, 200, start - sent, sent, start + 1.0)


def test_backlogged_jain_counts_only_dispatches_while_the_other_tenant_waits() -> None:
    # Both send 4 / 3 standard requests at t=0; the router alternates heavy 1, 3, 5, 7 and
    # light 2, 4, 6. At t=7 light waits for nothing: that dispatch is not a choice between
    # the tenants and does not count. Counted: 3 and 3 -> perfectly fair.
    outs = [started("standard", "heavy", 0.0, t) for t in (1, 3, 5, 7)]
    outs += [started("standard", "light", 0.0, t) for t in (2, 4, 6)]
    assert backlogged_jain(outs) == (pytest.approx(1.0), 6)


def test_backlogged_jain_by_hand_when_the_light_tenant_is_starved() -> None:
    # Light waits from 0 to 10 (then refused); heavy gets 4 dispatches, light 1 meanwhile.
    outs = [started("standard", "heavy", 0.0, t) for t in (1, 2, 3, 4)]
    outs += [started("standard", "light", 0.0, 5.0), Outcome("standard", "light", 503, None, 0.0, 10.0)]
    outs += [Outcome("standard", "heavy", 503, None, 0.0, 10.0)]  # heavy still backlogged at t=5
    jain, counted = backlogged_jain(outs)
    assert counted == 5 and jain == pytest.approx((4 + 1) ** 2 / (2 * (16 + 1)))


def test_backlogged_jain_is_per_class_priority_is_not_unfairness() -> None:
    # Heavy's critical requests go while light waits only in the standard class: not counted;
    # the light standard request goes while heavy waits in standard too: counted.
    outs = [started("critical", "heavy", 0.0, t) for t in (1, 2)]
    outs += [started("standard", "light", 0.0, 3.0), started("standard", "heavy", 0.0, 4.0)]
    assert backlogged_jain(outs)[1] == 1


def test_flow_section_is_spliced_before_the_overhead_section_and_replaced_on_rerun(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks-flow.md"
    doc.write_text("## Flow control under 2x overload (issue 12)\nrun 1\n")
    report = "# Benchmarks\n\n<!-- overhead:begin -->\n## EPP overhead\n<!-- overhead:end -->\n"
    once = splice_flow_section(report, doc)
    assert once.index("run 1") < once.index("<!-- overhead:begin -->")
    doc.write_text("## Flow control under 2x overload (issue 12)\nrun 2\n")
    twice = splice_flow_section(once, doc)
    assert "run 2" in twice and "run 1" not in twice and twice.count("<!-- flow:start -->") == 1
