"""soft-reflective-ceiling-policy against llm-d-router ebab687
pkg/epp/framework/plugins/flowcontrol/usagelimits/softreflectiveceiling (README.md formula and
every case of policy_test.go). Expected ceilings are worked out from the README's formula
ceiling[i] = 1 - i * s / (N - 1) and period = round(s / (1 - s)), written as literals."""

from __future__ import annotations

import pytest

from epp.flowcontrol.interfaces import AdaptiveUsageLimitPolicy
from epp.flowcontrol.plugins.soft_reflective_ceiling import SoftReflectiveCeiling
from epp.scheduling.plugins._parameterless import NoParams
from epp.scheduling.registry import ConfigError, parse_params, plugin_class


def test_registered_under_the_upstream_type_and_takes_no_parameters() -> None:
    cls = plugin_class("soft-reflective-ceiling-policy")
    assert cls is SoftReflectiveCeiling
    policy = cls(name="soft-reflective", params=parse_params(cls.Params, {}, "t"))  # {} is accepted
    assert isinstance(policy, AdaptiveUsageLimitPolicy) and policy.name == "soft-reflective"
    # TestFactory_UnknownFieldRejected: {"threshold": 0.5} fails at load.
    with pytest.raises(ConfigError, match=r"cfg.yaml: plugin 'sr'.*unknown parameter 'threshold'"):
        parse_params(NoParams, {"threshold": 0.5}, "cfg.yaml: plugin 'sr' (soft-reflective-ceiling-policy)")


def test_no_bands_and_a_single_band() -> None:
    p = SoftReflectiveCeiling()
    assert p.ceilings_at(0.9, []) == []
    for s in (0.0, 0.5, 0.99, 1.0):
        assert p.ceilings_at(s, [100]) == [1.0]  # one band alone is never gated


def test_critical_band_is_never_gated() -> None:
    p = SoftReflectiveCeiling()
    for s in (0.0, 0.3, 0.5, 0.7, 0.99, 1.0, 1.5):
        assert p.ceilings_at(s, [100, 0, -50])[0] == 1.0


def test_below_every_reflective_ceiling_all_bands_are_open() -> None:
    # s = 0.3, N = 3: reflective ceilings 1.0, 0.85, 0.70; 0.3 is below all of them.
    assert SoftReflectiveCeiling().ceilings_at(0.3, [100, 0, -50]) == [1.0, 1.0, 1.0]


def test_fully_saturated_blocks_every_band_but_the_top() -> None:
    assert SoftReflectiveCeiling().ceilings_at(1.0, [100, 0, -50]) == [1.0, 0.0, 0.0]


def test_reflective_formula_separates_open_and_gated_bands() -> None:
    # N = 4, s = 0.7: reflective ceilings 1.0, 0.7667, 0.5333, 0.3. Band 1 is below its ceiling
    # (open); bands 2 and 3 are at or past theirs (gated: 0.0 or 1.0, together).
    got = SoftReflectiveCeiling().ceilings_at(0.7, [100, 50, 0, -50])
    assert got[:2] == [1.0, 1.0]
    assert got[2] in (0.0, 1.0) and got[3] == got[2]


@pytest.mark.parametrize(("saturation", "pattern"), [
    # N = 2, s = 0.7: reflective ceiling 0.3, period round(0.7 / 0.3) = 2: closed, open, ...
    (0.7, [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]),
    # s = 0.75: period round(0.75 / 0.25) = 3: two closed, then open.
    (0.75, [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]),
    # s = 0.5: the lowest band's ceiling 0.5 is just reached; period round(1) = 1: always open.
    (0.5, [1.0, 1.0, 1.0]),
    # s = 0.9: period round(9) = 9: open on the 9th call only.
    (0.9, [0.0] * 8 + [1.0] + [0.0] * 8 + [1.0]),
])
def test_gated_band_alternates_with_the_period(saturation: float, pattern: list[float]) -> None:
    p = SoftReflectiveCeiling()
    for call, want in enumerate(pattern):
        assert p.ceilings_at(saturation, [100, -50]) == [1.0, want], f"call {call}"


def test_period_near_a_rounding_boundary_follows_upstreams_guard() -> None:
    # period = Go math.Round(s / (1 - s + 1e-9)). At s = 0.6 that is 1.4999999963 -> 1: open on
    # every call; at s = 0.62 it is 1.63 -> 2: every other call.
    p = SoftReflectiveCeiling()
    assert [p.ceilings_at(0.6, [1, 0])[1] for _ in range(4)] == [1.0, 1.0, 1.0, 1.0]
    q = SoftReflectiveCeiling()
    assert [q.ceilings_at(0.62, [1, 0])[1] for _ in range(4)] == [0.0, 1.0, 0.0, 1.0]


def test_the_tick_advances_only_in_the_alternating_regime() -> None:
    p = SoftReflectiveCeiling()
    for _ in range(5):  # s = 0.3: pure function, no tick
        p.ceilings_at(0.3, [1, 0])
    assert p.tick == 0
    assert p.ceilings_at(0.7, [1, 0]) == [1.0, 0.0]  # tick 1 of period 2: closed
    p.ceilings_at(1.2, [1, 0])  # over-saturated: no tick either
    assert p.ceilings_at(0.7, [1, 0]) == [1.0, 1.0]  # tick 2: open


def test_growing_priorities_keep_the_top_band_open() -> None:
    p = SoftReflectiveCeiling()
    p.ceilings_at(0.7, [100, -50])
    got = p.ceilings_at(0.7, [100, 50, 0, -50])
    assert len(got) == 4 and got[0] == 1.0


def test_no_starvation_under_rising_saturation() -> None:
    # Upstream's regression test: warm up at s = 0.6 (only band 2 gated, period 2), then 100
    # calls at s = 0.7 (bands 1 and 2 gated, period 2). Gated bands open on the same calls, so
    # band 2 is never open while band 1 is closed, and it opens at all.
    p = SoftReflectiveCeiling()
    for _ in range(3):
        p.ceilings_at(0.6, [100, 0, -50])
    open1 = open2 = 0
    for call in range(100):
        got = p.ceilings_at(0.7, [100, 0, -50])
        open1 += got[1] == 1.0
        open2 += got[2] == 1.0
        assert not (got[2] == 1.0 and got[1] != 1.0), f"call {call}: band 2 open behind a closed band 1"
    assert open1 == open2 == 50  # period 2: every other call
