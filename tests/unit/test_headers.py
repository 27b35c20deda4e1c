"""epp/headers.py: llm-d's current header names, GIE's deprecated aliases folded in."""

from __future__ import annotations

import pytest

from epp.datastore.datastore import Datastore, InferenceObjective
from epp.flowcontrol.plugins.slo_deadline_ordering import SLODeadlineOrdering
from epp.headers import DEPRECATED_ALIASES, FAIRNESS_ID, OBJECTIVE, SLO_TTFT, canonicalize
from epp.server.request import parse_request


def test_names_match_llm_d() -> None:
    # llm-d/llm-d-router pkg/epp/metadata/consts.go (FlowFairnessIDKey, ObjectiveKey, TTFT/TPOT
    # SLO keys and their Old* aliases).
    assert dict(DEPRECATED_ALIASES) == {
        "x-llm-d-inference-fairness-id": "x-gateway-inference-fairness-id",
        "x-llm-d-inference-objective": "x-gateway-inference-objective",
        "x-llm-d-slo-ttft-ms": "x-slo-ttft-ms",
        "x-llm-d-slo-tpot-ms": "x-slo-tpot-ms",
    }


@pytest.mark.parametrize(("sent", "expected"), [
    ({"x-gateway-inference-fairness-id": "a"}, {FAIRNESS_ID: "a"}),
    ({FAIRNESS_ID: "a"}, {FAIRNESS_ID: "a"}),
    # Both: the current name wins, as llm-d's GetLowerCaseHeaderValue reads it first.
    ({FAIRNESS_ID: "new", "x-gateway-inference-fairness-id": "old"}, {FAIRNESS_ID: "new"}),
    ({"x-slo-ttft-ms": "250", "other": "kept"}, {SLO_TTFT: "250", "other": "kept"}),
])
def test_canonicalize(sent: dict[str, str], expected: dict[str, str]) -> None:
    headers = dict(sent)
    canonicalize(headers)
    assert headers == expected
    canonicalize(headers)  # idempotent
    assert headers == expected


@pytest.mark.parametrize("name", [OBJECTIVE, "x-gateway-inference-objective"])
def test_the_objective_is_found_under_either_name(name: str) -> None:
    ds = Datastore()
    ds.upsert_objective(InferenceObjective(name="batch", model_name="batch", priority=-1))
    headers = {name: "batch"}
    canonicalize(headers)  # where headers enter (ext_proc, the admin API); parse_request reads the result
    request = parse_request(b'{"model": "m", "prompt": "hi"}', "/v1/completions", "r", headers, ds)
    assert request.priority == -1


def test_deadline_ordering_reads_the_current_ttft_header() -> None:
    from epp.flowcontrol.queue import QueueItem
    from epp.scheduling.types import LLMRequest

    def item(headers: dict[str, str]) -> QueueItem:
        canonicalize(headers)
        request = LLMRequest(request_id="r", model="m", target_model="m", headers=headers)
        return QueueItem(request, "f", 0, 0, 0, 100.0, 10.0, None)  # type: ignore[arg-type]

    ordering = SLODeadlineOrdering()
    assert ordering.sort_key(item({SLO_TTFT: "500"})) == pytest.approx(100.5)
    assert ordering.sort_key(item({"x-slo-ttft-ms": "250"})) == pytest.approx(100.25)
    assert ordering.sort_key(item({})) == float("inf")
