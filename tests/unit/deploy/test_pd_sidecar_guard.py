"""deploy/vllm/pd: the routing sidecars run with their SSRF guard fed by the pool."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from epp.sidecar import cli as sidecar_cli

PD = Path(__file__).resolve().parents[3] / "deploy" / "vllm" / "pd"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((PD / name).read_text()) if d]


def test_decode_sidecar_watches_its_pool_with_a_service_account_that_may_read_it() -> None:
    [deployment] = _docs("decode-deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    [sidecar] = [c for c in pod["initContainers"] if c["name"] == "routing-sidecar"]
    parser = argparse.ArgumentParser()
    sidecar_cli.add_parser(parser.add_subparsers())
    env = {e["name"]: "default" for e in sidecar.get("env", []) if e["name"] == "POD_NAMESPACE"}
    args = [a.replace("$(POD_NAMESPACE)", env["POD_NAMESPACE"]) for a in sidecar["args"]]
    config = sidecar_cli.config_from_args(parser.parse_args(["sidecar", *args]))
    config.validate()
    [pool] = _docs("inferencepool-pd-patch.yaml")
    assert config.kubernetes is not None and config.kubernetes.pool_name == pool["metadata"]["name"]

    rbac = {(d["kind"], d["metadata"]["name"]): d for d in _docs("sidecar-rbac.yaml")}
    account = pod["serviceAccountName"]
    assert ("ServiceAccount", account) in rbac
    [binding] = [d for (kind, _), d in rbac.items() if kind == "RoleBinding"
                 if any(s["name"] == account for s in d["subjects"])]
    role = rbac[("Role", binding["roleRef"]["name"])]
    granted = {(g, r) for rule in role["rules"] if {"list", "watch"} <= set(rule["verbs"])
               for g in rule["apiGroups"] for r in rule["resources"]}
    assert {("", "pods"), ("inference.networking.k8s.io", "inferencepools"),
            ("inference.networking.x-k8s.io", "inferenceobjectives")} <= granted
    assert "sidecar-rbac.yaml" in _docs("kustomization.yaml")[0]["resources"]
