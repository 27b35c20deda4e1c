"""Usage-limit policies against the formulas and validation rules of llm-d-router's
priority-holdback-policy and static-usage-limit-policy (usagelimits/priorityholdback/README.md)."""

from __future__ import annotations

import pytest

from epp.flowcontrol.plugins.priority_holdback import PriorityHoldback
from epp.flowcontrol.plugins.static_usage_limit import StaticUsageLimit
from epp.scheduling.registry import ConfigError, parse_params


def holdback(**raw: object) -> PriorityHoldback:
    return PriorityHoldback(params=parse_params(PriorityHoldback.Params, raw, "cfg.yaml: plugin 'h'"))


def test_rank_domain_spreads_ceilings_in_equal_steps() -> None:
    # README example parameters: minCeiling 0.4, maxCeiling 0.9; c_i = max - i * (max - min) / (N - 1).
    assert holdback(minCeiling=0.4, maxCeiling=0.9).ceilings([10, 5, 0, -1]) == pytest.approx(
        [0.9, 0.9 - 0.5 / 3, 0.9 - 1.0 / 3, 0.4])


def test_value_domain_scales_with_the_priority_value() -> None:
    # r = (p - pMin) / (pMax - pMin): priorities 10, 8, 0 -> r = 1, 0.8, 0.
    assert holdback(minCeiling=0.5, domain="value").ceilings([10, 8, 0]) == pytest.approx([1.0, 0.9, 0.5])
    assert holdback(minCeiling=0.5, domain="value").ceilings([3, 3]) == [1.0, 1.0]


def test_a_single_priority_is_never_held_back() -> None:
    assert holdback(minCeiling=0.2, maxCeiling=0.8).ceilings([0]) == [0.8]


@pytest.mark.parametrize(("raw", "message"), [
    ({}, "parameter 'minCeiling' is required"),
    ({"minCeiling": 1.0}, "'minCeiling' must be in [0.0, 1.0)"),
    ({"minCeiling": 0.5, "maxCeiling": 0.4}, "must be strictly less than 'maxCeiling'"),
    ({"minCeiling": 0.1, "maxCeiling": 1.5}, "'maxCeiling' must be in (0.0, 1.0]"),
    ({"minCeiling": 0.1, "domain": "log"}, "parameter 'domain'"),
])
def test_holdback_validation_names_file_plugin_and_parameter(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        holdback(**raw)
    assert "cfg.yaml: plugin 'h'" in str(e.value) and message in str(e.value)


def test_static_policy_applies_one_threshold() -> None:
    assert StaticUsageLimit().ceilings([1, 0, -1]) == [1.0, 1.0, 1.0]
    p = StaticUsageLimit(params=parse_params(StaticUsageLimit.Params, {"threshold": 0.8}, "t"))
    assert p.ceilings([0]) == [0.8]
    with pytest.raises(ConfigError, match="threshold"):
        parse_params(StaticUsageLimit.Params, {"threshold": 0}, "t")
