"""SLO headers (llm-d names, legacy aliases) and per-objective defaults."""

from __future__ import annotations

import pytest

from epp.headers import canonicalize
from epp.latency.slo import NO_SLO, SLO, ObjectiveSLO, request_slo
from epp.scheduling.types import LLMRequest, SchedulingError


def req(headers: dict[str, str], model: str = "m") -> LLMRequest:
    headers = dict(headers)
    canonicalize(headers)  # as the EPP does where headers enter (ext_proc, the admin API)
    return LLMRequest(request_id="r", model=model, target_model=model, prompt="p", headers=headers)


def test_headers_current_and_legacy_names() -> None:
    assert request_slo(req({"x-llm-d-slo-ttft-ms": "250", "x-llm-d-slo-tpot-ms": "20"}), {}) == SLO(0.25, 0.02)
    assert request_slo(req({"x-slo-ttft-ms": "500"}), {}) == SLO(0.5, None)
    # The current name wins over the deprecated alias.
    assert request_slo(req({"x-llm-d-slo-ttft-ms": "100", "x-slo-ttft-ms": "900"}), {}).ttft_s == 0.1


def test_no_slo_without_headers_or_defaults() -> None:
    assert request_slo(req({}), {}) is NO_SLO
    assert request_slo(req({}), {"other": ObjectiveSLO(100, None)}) is NO_SLO


def test_objective_defaults_fill_missing_targets() -> None:
    defaults = {"chat": ObjectiveSLO(300, 40), "m": ObjectiveSLO(1000, None)}
    # By objective header first, then by model name; a header overrides one dimension only.
    assert request_slo(req({"x-gateway-inference-objective": "chat"}), defaults) == SLO(0.3, 0.04)
    assert request_slo(req({"x-gateway-inference-objective": "chat", "x-slo-tpot-ms": "10"}), defaults) == \
        SLO(0.3, 0.01)
    assert request_slo(req({}), defaults) == SLO(1.0, None)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", "1e12", ""])
def test_bad_header_is_a_400(value: str) -> None:
    with pytest.raises(SchedulingError) as info:
        request_slo(req({"x-llm-d-slo-ttft-ms": value}), {})
    assert info.value.status == 400
    assert info.value.code == "invalid_slo_header"
    assert "x-llm-d-slo-ttft-ms" in str(info.value)
