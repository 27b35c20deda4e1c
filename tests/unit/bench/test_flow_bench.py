"""`epp bench flow` arithmetic: Jain's index over max-min fair shares, and the summary."""

from __future__ import annotations

import math

import pytest

from epp.bench.flow import ArmResult, Outcome, jain_index


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
            Outcome("critical", "light", 0, None, 0.0, 1.0)]
    m = ArmResult("x", 1.0, 2.0, 0.1, outs).summary()
    assert (m["sent"], m["ok"], m["rejected"], m["hung"], m["lost"]) == (7, 3, 2, 1, 1)
    assert math.isnan(m["critical_ttft_p99_s"])  # no critical request was served
