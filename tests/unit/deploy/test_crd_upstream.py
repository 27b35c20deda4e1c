"""Our InferencePool CRD against the upstream release it claims to match.

The facts file (tests/unit/deploy/upstream/) holds what was extracted from GIE's own CRD at
the tag named there: every schema keyword except descriptions, plus names, scope, version
flags and annotations. Applying a CRD replaces the schema, so any difference would silently
downgrade a cluster that has upstream's installed (issue 17)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.unit.deploy.openapi_subset import validate

REPO = Path(__file__).resolve().parents[3]
OURS = REPO / "deploy" / "crds" / "inference.networking.k8s.io_inferencepools.yaml"
FACTS = Path(__file__).parent / "upstream" / "inferencepool-v1.6.0.yaml"


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _diff(ours: Any, theirs: Any, path: str = "") -> list[str]:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        out: list[str] = []
        for key in sorted(set(ours) | set(theirs)):
            if key not in theirs:
                out.append(f"{path}.{key}: only in ours")
            elif key not in ours:
                out.append(f"{path}.{key}: missing (upstream has {theirs[key]!r})")
            else:
                out += _diff(ours[key], theirs[key], f"{path}.{key}")
        return out
    scalars = isinstance(ours, list) and isinstance(theirs, list) and all(
        not isinstance(x, dict | list) for x in ours + theirs)
    if scalars:
        # required/enum lists: order carries no meaning
        return [] if sorted(map(str, ours)) == sorted(map(str, theirs)) else [f"{path}: {ours} != {theirs}"]
    return [] if ours == theirs else [f"{path}: {ours!r} != upstream {theirs!r}"]


def test_schema_equals_upstream_release() -> None:
    ours = yaml.safe_load(OURS.read_text())
    facts = yaml.safe_load(FACTS.read_text())
    (version,) = ours["spec"]["versions"]
    assert _diff(_strip(version["schema"]["openAPIV3Schema"]), facts["openAPIV3Schema"]) == []
    assert {k: v for k, v in version.items() if k != "schema"} == facts["version"]
    assert ours["spec"]["names"] == facts["names"] and ours["spec"]["scope"] == facts["scope"]
    assert ours["metadata"]["name"] == facts["metadata"]["name"]
    assert ours["metadata"]["annotations"] == facts["metadata"]["annotations"]


def test_the_fields_issue_17_named_are_there() -> None:
    """Spelled out, so a regression names the field rather than a path in a diff."""
    schema = yaml.safe_load(OURS.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]["properties"]
    assert spec["appProtocol"]["enum"] == ["http", "kubernetes.io/h2c"]
    assert spec["appProtocol"]["default"] == "http"
    parent = schema["properties"]["status"]["properties"]["parents"]["items"]["properties"]
    assert "controllerName" in parent and "pattern" in parent["controllerName"]
    cond = parent["conditions"]["items"]["properties"]
    assert "pattern" in cond["reason"] and "pattern" in cond["type"]
    annotations = yaml.safe_load(OURS.read_text())["metadata"]["annotations"]
    assert annotations["inference.networking.k8s.io/bundle-version"] == "v1.6.0"


def test_upstream_patterns_accept_and_reject_what_kubernetes_would() -> None:
    """The copied patterns do their job on real values (gateway status as Istio writes it)."""
    schema = yaml.safe_load(OURS.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    pool = {
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool", "metadata": {},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": 8000}]},
        "status": {"parents": [{
            "parentRef": {"name": "gw", "namespace": "default"},
            "controllerName": "istio.io/gateway-controller",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }]},
    }
    assert validate(pool, schema) == []  # endpointPickerRef is optional in the API since v1.5
    pool["status"]["parents"][0]["controllerName"] = "istio.io"  # must have a path
    pool["spec"]["appProtocol"] = "grpc"
    errors = validate(pool, schema)
    assert any("controllerName" in e for e in errors) and any("appProtocol" in e for e in errors)
