"""Translation of InferencePool / InferenceObjective / InferenceModel / Pod JSON."""

from __future__ import annotations

import pytest

from epp.datastore.endpoint import Role
from epp.k8s.resources import (
    ResourceError,
    label_selector_string,
    parse_inference_objective,
    parse_inference_pool,
    parse_pod,
    pod_endpoints,
)

POOL_V1 = {
    "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
    "metadata": {"name": "llama", "namespace": "ml"},
    "spec": {
        "selector": {"matchLabels": {"app": "vllm"}},
        "targetPorts": [{"number": 8000}, {"number": 8001}],
        "endpointPickerRef": {"group": "", "kind": "Service", "name": "llama-epp",
                              "port": {"number": 9002}, "failureMode": "FailOpen"},
    },
}
POOL_V1ALPHA2 = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha2", "kind": "InferencePool",
    "metadata": {"name": "llama", "namespace": "ml"},
    "spec": {"selector": {"app": "vllm"}, "targetPortNumber": 8000,
             "extensionRef": {"name": "llama-epp", "portNumber": 9100, "failureMode": "FailClose"}},
}


def test_pool_v1() -> None:
    pool = parse_inference_pool(POOL_V1)
    assert (pool.name, pool.namespace) == ("llama", "ml")
    assert pool.selector == {"app": "vllm"}
    assert pool.target_ports == (8000, 8001)
    assert (pool.endpoint_picker_name, pool.endpoint_picker_port, pool.failure_mode) == (
        "llama-epp", 9002, "FailOpen")


def test_pool_v1alpha2() -> None:
    pool = parse_inference_pool(POOL_V1ALPHA2)
    assert pool.selector == {"app": "vllm"} and pool.target_ports == (8000,)
    assert (pool.endpoint_picker_name, pool.endpoint_picker_port, pool.failure_mode) == (
        "llama-epp", 9100, "FailClose")


@pytest.mark.parametrize(
    ("spec_patch", "message"),
    [
        ({"selector": {"matchLabels": {}}}, "must not be empty"),
        ({"targetPorts": []}, "non-empty list"),
        ({"targetPorts": [{"number": 70000}]}, "out of range"),
        ({"targetPorts": [{"number": 8000}, {"number": 8000}]}, "unique"),
        ({"targetPorts": [{"number": "8000"}]}, "targetPorts[0].number must be an integer"),
        ({"endpointPickerRef": {"name": "x", "failureMode": "Sometimes"}}, "FailOpen or FailClose"),
    ],
)
def test_pool_errors_name_the_field(spec_patch: dict[str, object], message: str) -> None:
    bad = {**POOL_V1, "spec": {**POOL_V1["spec"], **spec_patch}}  # type: ignore[dict-item]
    with pytest.raises(ResourceError, match=r"InferencePool ml/llama: .*") as e:
        parse_inference_pool(bad)
    assert message in str(e.value)


def test_objective_current_shape_keyed_by_name() -> None:
    obj = parse_inference_objective({
        "kind": "InferenceObjective", "metadata": {"name": "chat", "namespace": "ml"},
        "spec": {"priority": 10, "poolRef": {"name": "llama"}},
    })
    assert (obj.name, obj.model_name, obj.priority, obj.pool_name) == ("chat", "chat", 10, "llama")


def test_objective_defaults_and_early_drafts() -> None:
    unset = parse_inference_objective({"metadata": {"name": "a"}, "spec": {"poolRef": {"name": "p"}}})
    assert unset.priority == 0
    int_criticality = parse_inference_objective(
        {"metadata": {"name": "b"}, "spec": {"criticality": -3, "poolRef": {"name": "p"}}})
    assert int_criticality.priority == -3


@pytest.mark.parametrize(("criticality", "priority"), [("Critical", 1), ("Standard", 0), ("Sheddable", -1)])
def test_legacy_inference_model(criticality: str, priority: int) -> None:
    obj = parse_inference_objective({
        "kind": "InferenceModel", "metadata": {"name": "m"},
        "spec": {"modelName": "sql-lora", "criticality": criticality, "poolRef": {"name": "p"},
                 "targetModels": [{"name": "sql-lora-v1"}, {"name": "sql-lora-v2", "weight": 3}]},
    })
    assert obj.model_name == "sql-lora" and obj.priority == priority
    assert obj.target_models == (("sql-lora-v1", 1), ("sql-lora-v2", 3))


def test_legacy_inference_model_bad_criticality() -> None:
    with pytest.raises(ResourceError, match=r"InferenceModel \?/m: spec\.criticality: unknown criticality"):
        parse_inference_objective({"kind": "InferenceModel", "metadata": {"name": "m"},
                                   "spec": {"criticality": "Urgent"}})


def _pod(**status: object) -> dict[str, object]:
    return {
        "metadata": {"name": "vllm-0", "namespace": "ml",
                     "labels": {"app": "vllm", "llm-d.ai/role": "prefill"}},
        "status": {"podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}], **status},
    }


def test_pod_states() -> None:
    assert parse_pod(_pod()).routable
    assert not parse_pod(_pod(conditions=[{"type": "Ready", "status": "False"}])).routable
    assert not parse_pod(_pod(podIP=None)).routable
    terminating = _pod()
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"  # type: ignore[index]
    assert not parse_pod(terminating).routable


def test_one_endpoint_per_target_port() -> None:
    eps = pod_endpoints(parse_pod(_pod()), parse_inference_pool(POOL_V1))
    assert [(e.key, e.hostport) for e in eps] == [
        ("ml/vllm-0-rank-0", "10.0.0.7:8000"), ("ml/vllm-0-rank-1", "10.0.0.7:8001")]
    assert all(e.role is Role.PREFILL for e in eps)
    single = pod_endpoints(parse_pod(_pod()), parse_inference_pool(POOL_V1ALPHA2))
    assert [e.key for e in single] == ["ml/vllm-0"]


def test_ipv6_endpoint_hostport() -> None:
    eps = pod_endpoints(parse_pod(_pod(podIP="fd00::7")), parse_inference_pool(POOL_V1ALPHA2))
    assert eps[0].hostport == "[fd00::7]:8000"


def test_label_selector_string_is_sorted() -> None:
    assert label_selector_string({"b": "2", "a": "1"}) == "a=1,b=2"
