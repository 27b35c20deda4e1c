"""Every manifest under deploy/{crds,gateway-api,vllm} parses and is internally consistent.

CRD instances are validated against the CRD openAPIV3Schema in deploy/crds; core kinds
are checked for the fields and cross-references Kubernetes would only reject (or worse,
accept and misbehave on) at apply time.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy.openapi_subset import structural_problems, validate

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
OWNED_DIRS = [DEPLOY / "crds", DEPLOY / "gateway-api", DEPLOY / "vllm"]
YAML_FILES = sorted(p for d in OWNED_DIRS for p in d.glob("*.yaml"))  # deploy/vllm/pd/ is not ours
HELM_VALUES = {"prometheus-adapter-values.yaml"}  # YAML, but not a Kubernetes object

Doc = dict[str, Any]


def _load_all() -> list[tuple[Path, Doc]]:
    docs: list[tuple[Path, Doc]] = []
    for path in YAML_FILES:
        if path.name in HELM_VALUES:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


DOCS = _load_all()


def _of_kind(kind: str) -> list[Doc]:
    return [d for _, d in DOCS if d.get("kind") == kind]


def _named(kind: str, name: str) -> Doc:
    matches = [d for d in _of_kind(kind) if d["metadata"]["name"] == name]
    assert matches, f"no {kind} named {name!r} in deploy/"
    return matches[0]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _pod_spec_selected_by(selector: dict[str, str]) -> tuple[Doc, Doc]:
    """(Deployment, its pod spec) whose pod template labels match `selector`."""
    for dep in _of_kind("Deployment"):
        if _selects(selector, dep["spec"]["template"]["metadata"]["labels"]):
            return dep, dep["spec"]["template"]["spec"]
    raise AssertionError(f"no Deployment's pods match selector {selector}")


def _container_ports(pod_spec: Doc) -> dict[str | int, int]:
    """Port names and numbers of all containers -> number."""
    out: dict[str | int, int] = {}
    for c in pod_spec["containers"]:
        for p in c.get("ports", []):
            out[p["containerPort"]] = p["containerPort"]
            if "name" in p:
                out[p["name"]] = p["containerPort"]
    return out


def test_every_yaml_file_parses() -> None:
    for path in YAML_FILES:
        assert list(yaml.safe_load_all(path.read_text())), f"{path} is empty"


def test_there_are_manifests() -> None:
    assert len(YAML_FILES) >= 10
    kinds = {d.get("kind") for _, d in DOCS}
    for kind in ("CustomResourceDefinition", "Gateway", "HTTPRoute", "InferencePool", "InferenceObjective",
                 "Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "PodDisruptionBudget",
                 "ServiceMonitor", "ConfigMap", "HorizontalPodAutoscaler", "PrometheusRule"):
        assert kind in kinds, f"missing a {kind} manifest"


@pytest.mark.parametrize(("path", "doc"), DOCS, ids=[f"{p.name}:{d.get('kind')}" for p, d in DOCS])
def test_every_document_has_identity(path: Path, doc: Doc) -> None:
    api_version = doc.get("apiVersion")
    assert api_version == "v1" or re.fullmatch(r"[a-z0-9.-]+/v\d+((alpha|beta)\d+)?", str(api_version))
    assert isinstance(doc.get("kind"), str)
    if doc["kind"] != "Kustomization":
        assert doc.get("metadata", {}).get("name"), f"{path.name}: {doc['kind']} without metadata.name"


# --- CRDs and their instances ---------------------------------------------------------------
CRDS = {(c["spec"]["group"], c["spec"]["names"]["kind"]): c for c in _of_kind("CustomResourceDefinition")}


@pytest.mark.parametrize("crd", list(CRDS.values()), ids=list(map(str, CRDS)))
def test_crd_is_well_formed(crd: Doc) -> None:
    spec = crd["spec"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
    assert sum(v["storage"] for v in spec["versions"]) == 1
    if spec["group"].endswith(".k8s.io") and not spec["group"].endswith("x-k8s.io"):
        assert "api-approved.kubernetes.io" in crd["metadata"].get("annotations", {})
    for v in spec["versions"]:
        assert structural_problems(v["schema"]["openAPIV3Schema"]) == []


def _schema_for(doc: Doc) -> dict[str, Any]:
    group, version = doc["apiVersion"].split("/")
    crd = CRDS[(group, doc["kind"])]
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = ver["schema"]["openAPIV3Schema"]
    return schema


CR_DOCS = [(p, d) for p, d in DOCS if "/" in d.get("apiVersion", "")
           and (d["apiVersion"].split("/")[0], d["kind"]) in CRDS]


@pytest.mark.parametrize(("path", "doc"), CR_DOCS, ids=[f"{p.name}:{d['metadata']['name']}" for p, d in CR_DOCS])
def test_custom_resources_validate_against_crd_schema(path: Path, doc: Doc) -> None:
    assert validate(doc, _schema_for(doc)) == []


def test_validator_catches_bad_pools() -> None:
    good = _named("InferencePool", "vllm-llama3-8b-instruct")
    schema = _schema_for(good)
    bad_port = json.loads(json.dumps(good))
    bad_port["spec"]["targetPorts"] = [{"number": 8000}, {"number": 8000}]
    assert any("unique" in e for e in validate(bad_port, schema))
    no_epp_port = json.loads(json.dumps(good))
    del no_epp_port["spec"]["endpointPickerRef"]["port"]
    assert any("port is required" in e for e in validate(no_epp_port, schema))
    typo = json.loads(json.dumps(good))
    typo["spec"]["endpointPickerRef"]["failureMode"] = "FailOpenn"
    typo["spec"]["targetPort"] = 8000
    errors = validate(typo, schema)
    assert any("failureMode" in e for e in errors) and any("spec.targetPort: unknown field" in e for e in errors)


def test_pool_epp_and_vllm_fit_together() -> None:
    pool = _named("InferencePool", "vllm-llama3-8b-instruct")
    ref = pool["spec"]["endpointPickerRef"]
    svc = _named("Service", ref["name"])
    assert ref["port"]["number"] in [p["port"] for p in svc["spec"]["ports"]]
    _, vllm_pod = _pod_spec_selected_by(pool["spec"]["selector"]["matchLabels"])
    ports = _container_ports(vllm_pod)
    for tp in pool["spec"]["targetPorts"]:
        assert tp["number"] in ports, f"target port {tp['number']} not a vLLM container port"
    for obj in _of_kind("InferenceObjective"):
        assert _named("InferencePool", obj["spec"]["poolRef"]["name"])


def test_httproute_points_at_the_pool_through_the_gateway() -> None:
    (route,) = _of_kind("HTTPRoute")
    for parent in route["spec"]["parentRefs"]:
        assert _named("Gateway", parent["name"])
    refs = [b for r in route["spec"]["rules"] for b in r["backendRefs"]]
    assert refs and all(b["group"] == "inference.networking.k8s.io" and b["kind"] == "InferencePool"
                        for b in refs)
    for b in refs:
        assert _named("InferencePool", b["name"])


# --- core kinds ----------------------------------------------------------------------------
@pytest.mark.parametrize("dep", _of_kind("Deployment"), ids=lambda d: d["metadata"]["name"])
def test_deployment_consistency(dep: Doc) -> None:
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    assert _selects(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
    volumes = {v["name"] for v in pod.get("volumes", [])}
    for c in pod["containers"]:
        assert c["name"] and c["image"]
        names = [p["name"] for p in c.get("ports", []) if "name" in p]
        assert len(names) == len(set(names))
        ports = _container_ports({"containers": [c]})
        for p in c.get("ports", []):
            assert 1 <= p["containerPort"] <= 65535
        for probe_kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = c.get(probe_kind)
            if probe is None:
                continue
            handler = probe.get("httpGet") or probe.get("grpc") or probe.get("tcpSocket")
            assert handler is not None, f"{c['name']} {probe_kind} has no handler"
            assert handler["port"] in ports, f"{c['name']} {probe_kind} port {handler['port']} not declared"
        assert "readinessProbe" in c, f"{c['name']} has no readiness probe"
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes
    for v in pod.get("volumes", []):
        if "configMap" in v:
            assert _named("ConfigMap", v["configMap"]["name"])
    if "serviceAccountName" in pod:
        assert _named("ServiceAccount", pod["serviceAccountName"])


@pytest.mark.parametrize("svc", _of_kind("Service"), ids=lambda d: d["metadata"]["name"])
def test_service_targets_existing_container_ports(svc: Doc) -> None:
    _, pod = _pod_spec_selected_by(svc["spec"]["selector"])
    ports = _container_ports(pod)
    for p in svc["spec"]["ports"]:
        assert p.get("targetPort", p["port"]) in ports, f"{svc['metadata']['name']}: {p} has no container port"


def test_pdb_selects_pods() -> None:
    for pdb in _of_kind("PodDisruptionBudget"):
        dep, _ = _pod_spec_selected_by(pdb["spec"]["selector"]["matchLabels"])
        min_available = pdb["spec"].get("minAvailable", 0)
        assert isinstance(min_available, int) and min_available < dep["spec"]["replicas"], (
            "a PDB with minAvailable >= replicas blocks every node drain")


def test_monitors_scrape_declared_ports() -> None:
    for sm in _of_kind("ServiceMonitor"):
        services = [s for s in _of_kind("Service") if _selects(sm["spec"]["selector"]["matchLabels"],
                                                               s["metadata"].get("labels", {}))]
        assert services, "ServiceMonitor selects no Service (by the Service's own labels)"
        for ep in sm["spec"]["endpoints"]:
            assert ep["port"] in [p.get("name") for s in services for p in s["spec"]["ports"]]
    # PodMonitors (which select aggregated and P/D pods) are checked against the kustomize
    # builds in test_kustomize_builds.py.


def test_hpa_targets_vllm_on_an_external_queue_metric() -> None:
    (hpa,) = _of_kind("HorizontalPodAutoscaler")
    target = _named("Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    assert hpa["spec"]["minReplicas"] <= target["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    name = metric["external"]["metric"]["name"]
    adapter = yaml.safe_load((DEPLOY / "vllm" / "prometheus-adapter-values.yaml").read_text())
    assert name in [r["name"]["as"] for r in adapter["rules"]["external"]]


# --- RBAC: least privilege ------------------------------------------------------------------
ALLOWED_VERBS = {
    ("", "pods"): {"get", "list", "watch"},
    ("inference.networking.k8s.io", "inferencepools"): {"get", "list", "watch"},
    ("inference.networking.x-k8s.io", "inferencepools"): {"get", "list", "watch"},
    ("inference.networking.x-k8s.io", "inferenceobjectives"): {"get", "list", "watch"},
    ("llm-d.ai", "inferenceobjectives"): {"get", "list", "watch"},
    ("inference.networking.x-k8s.io", "inferencemodels"): {"get", "list", "watch"},
    ("llm-d.ai", "inferencemodelrewrites"): {"get", "list", "watch"},
    ("inference.networking.x-k8s.io", "inferencemodelrewrites"): {"get", "list", "watch"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
}


def test_rbac_is_least_privilege_and_sufficient() -> None:
    assert _of_kind("ClusterRole") == [] and _of_kind("ClusterRoleBinding") == [], (
        "everything the EPP reads is namespaced: a Role is enough")
    granted: dict[tuple[str, str], set[str]] = {}
    for role in _of_kind("Role"):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for res in rule["resources"]:
                    assert "*" not in (group, res) and "*" not in rule["verbs"]
                    key = (group, res)
                    assert key in ALLOWED_VERBS, f"{key} is not something the EPP needs"
                    assert set(rule["verbs"]) <= ALLOWED_VERBS[key], f"{key}: {rule['verbs']}"
                    granted.setdefault(key, set()).update(rule["verbs"])
    # What epp.k8s actually does: list+watch pods/pools/objectives, get/create/update the Lease.
    for key in [("", "pods"), ("inference.networking.k8s.io", "inferencepools"),
                ("inference.networking.x-k8s.io", "inferenceobjectives"), ("llm-d.ai", "inferenceobjectives"),
                ("llm-d.ai", "inferencemodelrewrites"), ("inference.networking.x-k8s.io", "inferencemodelrewrites")]:
        assert {"list", "watch"} <= granted.get(key, set()), key
    assert {"get", "create", "update"} <= granted[("coordination.k8s.io", "leases")]
    for rb in _of_kind("RoleBinding"):
        role = _named(rb["roleRef"]["kind"], rb["roleRef"]["name"])
        for subject in rb["subjects"]:
            sa = _named("ServiceAccount", subject["name"])
            assert subject["namespace"] == sa["metadata"]["namespace"] == role["metadata"]["namespace"]


# --- the EPP's own wiring ---------------------------------------------------------------------
def _epp_container() -> tuple[Doc, Doc]:
    pool = _named("InferencePool", "vllm-llama3-8b-instruct")
    dep, pod = _pod_spec_selected_by(
        _named("Service", pool["spec"]["endpointPickerRef"]["name"])["spec"]["selector"])
    return dep, pod["containers"][0]


def test_epp_args_parse_with_the_real_cli() -> None:
    from epp.cli import build_parser
    from epp.k8s.cli import KubernetesOptions

    _, c = _epp_container()
    env = {"POD_NAME": "epp-0", "POD_NAMESPACE": "default"}
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in c["args"]]
    parsed = build_parser().parse_args(["serve", *args])
    opts = KubernetesOptions.from_args(parsed)
    assert opts is not None and opts.pool_name == "vllm-llama3-8b-instruct" and opts.leader_elect
    declared = {p["containerPort"] for p in c["ports"]}
    ports = {parsed.grpc_port, parsed.health_port, parsed.grpc_health_port, parsed.metrics_port}
    assert ports == declared == {9002, 9003, 9004, 9090}
    for probe in ("livenessProbe", "readinessProbe"):  # the reference's gRPC probe services
        assert c[probe]["grpc"] == {"port": parsed.grpc_health_port, "service": probe.removesuffix("Probe")}
    mount_dirs = [m["mountPath"] for m in c["volumeMounts"]]
    assert any(str(parsed.config).startswith(d + "/") for d in mount_dirs)


def test_epp_configmap_loads_with_the_real_config_loader(tmp_path: Path) -> None:
    from epp.config.loader import load_scheduler_config
    from epp.datastore.datastore import Datastore
    from epp.scheduling.registry import PluginContext

    cm = _named("ConfigMap", "vllm-llama3-8b-instruct-epp-config")
    _, c = _epp_container()
    config_arg = next(a for a in c["args"] if a.startswith("--config="))
    key = Path(config_arg.split("=", 1)[1]).name
    text = cm["data"][key]
    cfg = yaml.safe_load(text)
    assert cfg["apiVersion"] == "inference.networking.x-k8s.io/v1alpha1" and cfg["kind"] == "EndpointPickerConfig"
    path = tmp_path / "config.yaml"
    path.write_text(text)
    loaded = load_scheduler_config(path, PluginContext(Datastore(), source=str(path)))
    assert "default" in loaded.profiles


def test_vllm_flags() -> None:
    pool = _named("InferencePool", "vllm-llama3-8b-instruct")
    _, pod = _pod_spec_selected_by(pool["spec"]["selector"]["matchLabels"])
    (c,) = pod["containers"]
    args = c["args"]
    assert "--enable-prefix-caching" in args
    kv = json.loads(args[args.index("--kv-events-config") + 1])
    assert kv == {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "tcp://*:5557",
                  "replay_endpoint": "tcp://*:5558", "topic": "kv-events"}
    assert int(kv["endpoint"].rsplit(":", 1)[1]) in _container_ports(pod)
    assert int(kv["replay_endpoint"].rsplit(":", 1)[1]) in _container_ports(pod)
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"


# --- alerts and dashboard ---------------------------------------------------------------------
# Metric names are checked against the simulator's, sidecar's and EPP's real registries in
# test_kustomize_builds.py; here only the shape of the rules and panels.
def test_alert_rules_and_dashboard_are_well_formed() -> None:
    (rule,) = _of_kind("PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    for g in rule["spec"]["groups"]:
        for r in g["rules"]:
            assert r["alert"] and r["labels"]["severity"] in ("warning", "critical")
    dash = json.loads((DEPLOY / "vllm" / "grafana-dashboard.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    alert_text = "\n".join(exprs)
    assert "scheduler_decision_duration_seconds_bucket" in alert_text and "> 0.01" in alert_text
    for needed in ("vllm:time_to_first_token_seconds_bucket", "vllm:kv_cache_usage_perc",
                   "inference_objective_request_error_total"):
        assert needed in alert_text


# --- image ------------------------------------------------------------------------------------
def test_dockerfile_runs_epp_serve_as_non_root() -> None:
    lines = [ln.strip() for ln in (REPO / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert froms and all(f == "python:3.11-slim" for f in froms)
    (user,) = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert user.split(":")[0] not in ("0", "root")
    (entry,) = [ln for ln in lines if ln.startswith("ENTRYPOINT")]
    assert json.loads(entry.removeprefix("ENTRYPOINT").strip()) == ["epp", "serve"]
    assert any("pip install ." in ln for ln in lines)
    exposed = {int(p) for ln in lines if ln.startswith("EXPOSE ") for p in shlex.split(ln)[1:]}
    _, c = _epp_container()
    assert {p["containerPort"] for p in c["ports"]} <= exposed
    dep, _ = _epp_container()
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user.split(":")[0])
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
