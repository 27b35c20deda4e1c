"""Translation of Kubernetes objects (as decoded JSON) into datastore types.

Pure functions, no I/O: the API shapes live here and nowhere else.

InferencePool, two API versions:
- `inference.networking.k8s.io/v1`: `spec.selector.matchLabels`, `spec.targetPorts[].number`
  (up to 8; every port is a distinct endpoint), `spec.endpointPickerRef{group, kind, name,
  port{number}, failureMode}`.
- `inference.networking.x-k8s.io/v1alpha2`: `spec.selector` (plain map),
  `spec.targetPortNumber`, `spec.extensionRef{group, kind, name, portNumber, failureMode}`.

InferenceObjective (`inference.networking.x-k8s.io/v1alpha2`): `spec.priority` (int) and
`spec.poolRef{group, kind, name}`; requests name it by metadata.name in the
`x-llm-d-inference-objective` header (or its alias `x-gateway-inference-objective`).
Pre-1.0 drafts carried `spec.modelName` and
`spec.criticality` (an int, or earlier the Critical|Standard|Sheddable enum); these are
accepted too. Legacy InferenceModel: `spec.modelName`, `spec.criticality`, `spec.targetModels`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.datastore.datastore import InferenceObjective, PoolSpec
from epp.datastore.endpoint import Endpoint

GROUP_V1 = "inference.networking.k8s.io"
GROUP_X = "inference.networking.x-k8s.io"
# The llm-d router moved InferenceObjective to llm-d.ai (GIE v1.6 dropped it from
# inference.networking.x-k8s.io); it reads both and prefers llm-d.ai, as does this EPP.
GROUP_LLMD = "llm-d.ai"
OBJECTIVE_GROUPS = (GROUP_LLMD, GROUP_X)  # preference order
POOL_VERSION_BY_GROUP = {GROUP_V1: "v1", GROUP_X: "v1alpha2"}
OBJECTIVE_VERSION = "v1alpha2"
DEFAULT_EPP_PORT = 9002

# InferenceModel / early InferenceObjective criticality -> priority (see InferenceObjective).
CRITICALITY_PRIORITY = {"Critical": 1, "Standard": 0, "Default": 0, "Normal": 0, "Sheddable": -1}

JSON = dict[str, Any]


class ResourceError(ValueError):
    """An object that does not have the shape its API version promises."""


def _obj_name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ResourceError(f"{where} must be an integer, got {value!r}")
    return value


def parse_inference_pool(obj: Mapping[str, Any]) -> PoolSpec:
    """InferencePool (v1 or v1alpha2, detected from the object's shape) -> PoolSpec."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec")
    where = f"InferencePool {_obj_name(obj)}"
    if not isinstance(spec, dict):
        raise ResourceError(f"{where}: spec is missing")

    raw_selector = spec.get("selector")
    if not isinstance(raw_selector, dict):
        raise ResourceError(f"{where}: spec.selector must be a map")
    # v1 wraps the labels in matchLabels; v1alpha2 is the plain map.
    labels = raw_selector.get("matchLabels", raw_selector)
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ResourceError(f"{where}: spec.selector labels must be a map of strings")
    if not labels:
        # An empty selector would select every pod of the namespace.
        raise ResourceError(f"{where}: spec.selector must not be empty")

    if "targetPorts" in spec:
        ports_raw = spec["targetPorts"]
        if not isinstance(ports_raw, list) or not ports_raw:
            raise ResourceError(f"{where}: spec.targetPorts must be a non-empty list")
        ports = tuple(
            _as_int((p or {}).get("number"), f"{where}: spec.targetPorts[{i}].number")
            for i, p in enumerate(ports_raw)
        )
    elif "targetPortNumber" in spec:
        ports = (_as_int(spec["targetPortNumber"], f"{where}: spec.targetPortNumber"),)
    else:
        raise ResourceError(f"{where}: spec.targetPorts (v1) or spec.targetPortNumber (v1alpha2) is required")
    for port in ports:
        if not 1 <= port <= 65535:
            raise ResourceError(f"{where}: target port {port} is out of range 1..65535")
    if len(set(ports)) != len(ports):
        raise ResourceError(f"{where}: target ports must be unique, got {list(ports)}")

    picker_name = ""
    picker_port = DEFAULT_EPP_PORT
    failure_mode = "FailClose"
    ref = spec.get("endpointPickerRef")
    if isinstance(ref, dict):
        picker_name = str(ref.get("name", ""))
        port_obj = ref.get("port")
        if isinstance(port_obj, dict) and "number" in port_obj:
            picker_port = _as_int(port_obj["number"], f"{where}: spec.endpointPickerRef.port.number")
        elif "portNumber" in ref:  # early v1 drafts
            picker_port = _as_int(ref["portNumber"], f"{where}: spec.endpointPickerRef.portNumber")
        failure_mode = str(ref.get("failureMode") or "FailClose")
    else:
        ext = spec.get("extensionRef")
        if isinstance(ext, dict):
            picker_name = str(ext.get("name", ""))
            if ext.get("portNumber") is not None:
                picker_port = _as_int(ext["portNumber"], f"{where}: spec.extensionRef.portNumber")
            failure_mode = str(ext.get("failureMode") or "FailClose")
    if failure_mode not in ("FailOpen", "FailClose"):
        raise ResourceError(f"{where}: failureMode must be FailOpen or FailClose, got {failure_mode!r}")

    return PoolSpec(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "default")),
        selector=dict(labels),
        target_ports=ports,
        endpoint_picker_name=picker_name,
        endpoint_picker_port=picker_port,
        failure_mode=failure_mode,
    )


def _criticality_priority(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        if value not in CRITICALITY_PRIORITY:
            raise ResourceError(f"{where}: unknown criticality {value!r} (Critical|Standard|Sheddable)")
        return CRITICALITY_PRIORITY[value]
    return _as_int(value, where)


def _target_models(spec: Mapping[str, Any], where: str) -> tuple[tuple[str, int], ...]:
    raw = spec.get("targetModels") or []
    if not isinstance(raw, list):
        raise ResourceError(f"{where}: spec.targetModels must be a list")
    out: list[tuple[str, int]] = []
    for i, tm in enumerate(raw):
        if not isinstance(tm, dict) or not isinstance(tm.get("name"), str):
            raise ResourceError(f"{where}: spec.targetModels[{i}].name is required")
        weight = tm.get("weight")
        w = 1 if weight is None else _as_int(weight, f"{where}: spec.targetModels[{i}].weight")
        out.append((tm["name"], w))
    return tuple(out)


def objective_pool_name(obj: Mapping[str, Any]) -> str:
    spec = obj.get("spec") or {}
    ref = spec.get("poolRef") or {}
    return str(ref.get("name", "")) if isinstance(ref, dict) else ""


def parse_inference_objective(obj: Mapping[str, Any]) -> InferenceObjective:
    """InferenceObjective (or legacy InferenceModel) -> datastore InferenceObjective.

    The datastore indexes objectives by `model_name`; for a current InferenceObjective, which
    has no model name, that is its metadata.name (the value of the objective header).
    """
    meta = obj.get("metadata") or {}
    spec = obj.get("spec")
    kind = str(obj.get("kind", "InferenceObjective"))
    where = f"{kind} {_obj_name(obj)}"
    if not isinstance(spec, dict):
        raise ResourceError(f"{where}: spec is missing")
    name = str(meta.get("name", ""))
    if "priority" in spec and spec["priority"] is not None:
        priority = _as_int(spec["priority"], f"{where}: spec.priority")
    else:
        priority = _criticality_priority(spec.get("criticality"), f"{where}: spec.criticality")
    model_name = spec.get("modelName") or name
    if not isinstance(model_name, str):
        raise ResourceError(f"{where}: spec.modelName must be a string")
    return InferenceObjective(
        name=name,
        model_name=model_name,
        priority=priority,
        pool_name=objective_pool_name(obj),
        target_models=_target_models(spec, where),
    )


@dataclass(frozen=True, slots=True)
class PodState:
    """What the EPP needs from a Pod."""

    name: str
    namespace: str
    ip: str
    labels: dict[str, str]
    ready: bool
    terminating: bool

    @property
    def routable(self) -> bool:
        return self.ready and not self.terminating and bool(self.ip)


def parse_pod(obj: Mapping[str, Any]) -> PodState:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
        if isinstance(c, dict)
    )
    labels = meta.get("labels") or {}
    return PodState(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "default")),
        ip=str(status.get("podIP") or ""),
        labels={str(k): str(v) for k, v in labels.items()},
        ready=ready,
        terminating=meta.get("deletionTimestamp") is not None,
    )


def endpoint_name(pod_name: str, rank: int, port_count: int) -> str:
    """Endpoint name of a pod's `rank`-th target port; the pod name itself for one port."""
    return pod_name if port_count == 1 else f"{pod_name}-rank-{rank}"


def pod_endpoints(pod: PodState, pool: PoolSpec) -> list[Endpoint]:
    """One Endpoint per target port of the pool, for a routable pod."""
    n = len(pool.target_ports)
    return [
        Endpoint(
            name=endpoint_name(pod.name, rank, n),
            address=pod.ip,
            port=port,
            namespace=pod.namespace,
            labels=dict(pod.labels),
        )
        for rank, port in enumerate(pool.target_ports)
    ]


def label_selector_string(selector: Mapping[str, str]) -> str:
    """Equality-based label selector for the API server (`k1=v1,k2=v2`)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
