"""Role filters: which pods may prefill, which may decode (llm-d semantics)."""

from __future__ import annotations

import pytest

from epp.datastore.endpoint import ROLE_LABEL, Endpoint
from epp.scheduling.plugins.by_role_decode_filter import DecodeRoleFilter
from epp.scheduling.plugins.by_role_filter import ByLabelFilter
from epp.scheduling.plugins.by_role_prefill_filter import PrefillRoleFilter
from epp.scheduling.registry import ConfigError, parse_params, plugin_class
from epp.scheduling.types import CycleState, LLMRequest


def _ep(name: str, role: str | None) -> Endpoint:
    labels = {"app": "vllm"} if role is None else {"app": "vllm", ROLE_LABEL: role}
    return Endpoint(name=name, address="127.0.0.1", port=8000 + len(name), labels=labels)


PODS = [
    _ep("p", "prefill"), _ep("d", "decode"), _ep("b", "both"), _ep("none", None),
    _ep("pd", "prefill-decode"), _ep("enc", "encode"),
]
REQ = LLMRequest(request_id="r", model="m", target_model="m", prompt="hi")


def _names(eps: object) -> list[str]:
    return [e.name for e in eps]  # type: ignore[attr-defined]


def test_prefill_filter_keeps_prefill_capable_pods_only() -> None:
    kept = PrefillRoleFilter().filter(CycleState(), REQ, PODS)
    assert _names(kept) == ["p", "b", "pd"]  # unlabeled pods are never prefillers


def test_decode_filter_keeps_decoders_and_unlabeled_pods() -> None:
    kept = DecodeRoleFilter().filter(CycleState(), REQ, PODS)
    assert _names(kept) == ["d", "b", "none", "pd"]


def test_role_filters_are_registered_under_llm_d_names() -> None:
    assert plugin_class("prefill-filter") is PrefillRoleFilter
    assert plugin_class("decode-filter") is DecodeRoleFilter
    assert plugin_class("by-label") is ByLabelFilter


def test_by_label_filter_parses_llm_d_parameters() -> None:
    params = parse_params(
        ByLabelFilter.Params,
        {"label": ROLE_LABEL, "validValues": ["decode"], "allowsNoLabel": True},
        "cfg.yaml: plugin 'dec' (by-label)",
    )
    flt = ByLabelFilter(name="dec", params=params)
    assert _names(flt.filter(CycleState(), REQ, PODS)) == ["d", "none"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"validValues": ["x"]}, "'label' must be set"),
        ({"label": "a"}, "nothing would pass"),
        ({"label": "a", "validValues": "decode"}, "must be a list"),
    ],
)
def test_by_label_filter_config_errors_name_the_plugin(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse_params(ByLabelFilter.Params, raw, "cfg.yaml: plugin 'dec' (by-label)")
    assert "cfg.yaml: plugin 'dec'" in str(err.value)
