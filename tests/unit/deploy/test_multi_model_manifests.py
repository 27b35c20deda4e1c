"""deploy/multi-model: two models on two InferencePools behind one HTTPRoute, each pool with its
own EPP, and the body-based router that makes the model header the routes match on.

Schemas: the InferencePools against our CRD (itself checked against GIE's release in
test_crd_upstream.py); the HTTPRoute against Gateway API's own v1 HTTPRoute schema
(tests/unit/deploy/upstream/httproute-v1-*.yaml, extracted from the upstream CRD, see its
`source`). The validator runs the schema's structural rules; its CEL rules are skipped by
name below and the few that concern these manifests are asserted by hand.
The full build (references, container arguments) is checked by test_kustomize_builds.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.bbr.config import parse_config
from tests.unit.deploy.openapi_subset import validate

REPO = Path(__file__).resolve().parents[3]
UPSTREAM = Path(__file__).parent / "upstream"
MODEL_HEADER = "X-Gateway-Model-Name"  # GIE pkg/bbr/plugins/common.ModelHeader
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def build() -> list[Doc]:
    out = subprocess.run(["kubectl", "kustomize", str(REPO / "deploy" / "multi-model")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _of(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _structural(errors: list[str]) -> list[str]:
    return [e for e in errors if "unknown to this validator" not in e]


def _pool_schema() -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "deploy/crds/inference.networking.k8s.io_inferencepools.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def _route_schema() -> dict[str, Any]:
    (path,) = UPSTREAM.glob("httproute-v1-*.yaml")
    return yaml.safe_load(path.read_text())["openAPIV3Schema"]  # type: ignore[no-any-return]


def test_pools_and_route_validate_against_upstream_schemas(build: list[Doc]) -> None:
    pools = _of(build, "InferencePool")
    assert set(pools) == {"vllm-llama3-8b-instruct", "sglang-qwen2-7b-instruct"}
    for pool in pools.values():
        assert validate(pool, _pool_schema()) == []
    (route,) = _of(build, "HTTPRoute").values()  # the single-pool catch-all route is gone
    assert _structural(validate(route, _route_schema())) == []
    # The upstream CEL rules that apply here: PathPrefix values start with "/" and have no
    # "//"; at most 128 matches over all rules.
    matches = [m for r in route["spec"]["rules"] for m in r["matches"]]
    assert all(m["path"]["value"].startswith("/") and "//" not in m["path"]["value"] for m in matches)
    assert len(matches) <= 128


def test_validator_sees_bad_header_matches() -> None:
    route = yaml.safe_load((REPO / "deploy/multi-model/httproute.yaml").read_text())
    route["spec"]["rules"][0]["matches"][0]["headers"][0]["type"] = "Prefix"
    route["spec"]["rules"][1]["matches"][0]["headers"][0]["name"] = "model name"
    errors = _structural(validate(route, _route_schema()))
    assert any("headers[0].type" in e for e in errors) and any("headers[0].name" in e for e in errors)


def test_two_models_two_pools_two_epps(build: list[Doc]) -> None:
    (route,) = _of(build, "HTTPRoute").values()
    pools, services, deployments = _of(build, "InferencePool"), _of(build, "Service"), _of(build, "Deployment")
    served: dict[str, str] = {}
    for rule in route["spec"]["rules"]:
        ((match,),) = [rule["matches"]]
        (header,) = match["headers"]
        assert header["type"] == "Exact" and header["name"].lower() == MODEL_HEADER.lower()
        (ref,) = rule["backendRefs"]
        assert (ref["group"], ref["kind"]) == ("inference.networking.k8s.io", "InferencePool")
        served[header["value"]] = ref["name"]
    assert len(served) == 2 and len(set(served.values())) == 2
    epps = set()
    for model, pool_name in served.items():
        pool = pools[pool_name]
        svc = services[pool["spec"]["endpointPickerRef"]["name"]]
        (epp,) = [d for d in deployments.values()
                  if d["spec"]["template"]["metadata"]["labels"].items() >= svc["spec"]["selector"].items()]
        args = epp["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"--pool-name={pool_name}" in args
        epps.add(epp["metadata"]["name"])
        # The pods the pool selects serve this model on the pool's target port.
        (pods,) = [d for d in deployments.values() if d["spec"]["template"]["metadata"]["labels"].items()
                   >= pool["spec"]["selector"]["matchLabels"].items()]
        (container,) = pods["spec"]["template"]["spec"]["containers"]
        assert f"--model={model}" in container["args"]
        ports = {p["containerPort"] for p in container["ports"]}
        assert {tp["number"] for tp in pool["spec"]["targetPorts"]} <= ports
        if "--engine=sglang" in container["args"]:
            assert "--engine=sglang" in args, "an SGLang pool's EPP must read SGLang's metric names"
    assert len(epps) == 2


def test_router_knows_the_routed_models(build: list[Doc]) -> None:
    (route,) = _of(build, "HTTPRoute").values()
    routed = {r["matches"][0]["headers"][0]["value"]: r["backendRefs"][0]["name"] for r in route["spec"]["rules"]}
    cm = _of(build, "ConfigMap")["body-based-router-config"]
    config = parse_config(yaml.safe_load(cm["data"]["bbr.yaml"]), "body-based-router-config")
    assert {m.id: p.name for p in config.pools for m in p.models} == routed
    (bbr,) = [d for d in _of(build, "Deployment").values() if d["metadata"]["name"] == "body-based-router"]
    container = bbr["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["epp", "bbr"]
    svc = _of(build, "Service")["body-based-router"]
    assert svc["spec"]["ports"][0]["appProtocol"] == "kubernetes.io/h2c"  # plaintext gRPC
