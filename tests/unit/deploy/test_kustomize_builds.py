"""Every kustomization under deploy/ built by the real `kubectl kustomize`, then checked for
references that only a cluster would otherwise catch (issue 17):

- every Service, ConfigMap (and key), Secret, ServiceAccount, Role, InferencePool, Gateway,
  GatewayClass and scale target named in a build exists in that same build (a Secret may
  be missing only when every reference to it is `optional: true`: the Hugging Face token
  is the user's, never shipped);
- every file a container is told to read (--config, --cert-path, the tokenizer path in the
  EPP config) lies in a mounted volume that has it;
- every container argument is accepted by the program it is passed to: the EPP, the
  sidecar and the simulator by their real argparse parsers, vLLM by the table below, taken
  from vLLM's own sources;
- every metric that a dashboard, alert or autoscaling query uses is exported by the
  simulator (the vLLM metric set), the sidecar or the EPP, read from their real registries.

Needs kubectl with kustomize >= v4 (components). It is a test failure, not a skip, when
kubectl is missing: CI installs it (.ci/run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
Doc = dict[str, Any]

KUSTOMIZATIONS = sorted(
    p.parent for p in DEPLOY.rglob("kustomization.yaml")
    if yaml.safe_load(p.read_text()).get("kind", "Kustomization") == "Kustomization")
COMPONENTS = sorted(
    p.parent for p in DEPLOY.rglob("kustomization.yaml")
    if yaml.safe_load(p.read_text()).get("kind") == "Component")
# Applied with `kubectl apply -f` next to a build (they need the Prometheus Operator CRDs).
MONITORING = [DEPLOY / "gateway-api" / "epp-servicemonitor.yaml", DEPLOY / "vllm" / "vllm-podmonitor.yaml",
              DEPLOY / "vllm" / "vllm-prometheusrule.yaml", DEPLOY / "vllm" / "vllm-hpa.yaml"]
# GatewayClasses that the gateway's own install creates (docs/kubernetes.md); any other
# class must be in the build.
EXTERNAL_GATEWAY_CLASSES = {"agentgateway", "istio"}
EPP_IMAGE = "ghcr.io/example/llm-epp:0.1.0"


# --- kubectl ------------------------------------------------------------------------------
def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl not found: these tests build deploy/ with `kubectl kustomize`. Install it "
                    "(Debian: apt-get install -y kubernetes-client; .ci/run does this in CI)")
    out = subprocess.run([path, "version", "--client"], capture_output=True, text=True, timeout=60).stdout
    match = re.search(r"Kustomize Version: v(\d+)", out)
    if match is None or int(match.group(1)) < 4:
        pytest.fail(f"{path} bundles kustomize older than v4 ({out.strip()!r}); deploy/ uses components "
                    "(kustomize >= v3.7): use a kubectl >= 1.21")
    return path


def kustomize(directory: Path) -> list[Doc]:
    proc = subprocess.run([_kubectl(), "kustomize", str(directory)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {directory.relative_to(REPO)} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _with_component(component: Path, tmp: Path) -> Path:
    """A throwaway kustomization: deploy/gateway-api plus one gateway component."""
    rel = os.path.relpath(DEPLOY, tmp)
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [f"{rel}/gateway-api"], "components": [f"{rel}/{component.relative_to(DEPLOY)}"]}))
    return tmp


# --- the objects of one install --------------------------------------------------------------
@dataclass
class Install:
    name: str
    docs: list[Doc]
    problems: list[str] = field(default_factory=list)
    # Half of an install (deploy/gateway-api without model servers): the pool's pods come
    # from another build, so only that one check is left to the whole installs.
    partial: bool = False

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d.get("kind") == kind]

    def get(self, kind: str, name: str) -> Doc | None:
        return next((d for d in self.of_kind(kind) if d["metadata"]["name"] == name), None)

    def need(self, kind: str, name: str, why: str) -> Doc | None:
        obj = self.get(kind, name)
        if obj is None:
            self.problems.append(f"{self.name}: {why} names {kind} {name!r}, which the build does not create")
        return obj

    def pod_specs(self) -> Iterator[tuple[str, Doc]]:
        for d in self.docs:
            if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
                yield d["metadata"]["name"], d["spec"]["template"]["spec"]


def _containers(pod: Doc) -> list[Doc]:
    """Regular containers and native sidecars (init containers that keep running)."""
    return pod.get("containers", []) + [c for c in pod.get("initContainers", [])
                                        if c.get("restartPolicy") == "Always"]


def _labels_match(selector: Doc, labels: dict[str, str]) -> bool:
    ok = all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())
    for expr in selector.get("matchExpressions") or []:
        value = labels.get(expr["key"])
        if expr["operator"] == "In":
            ok = ok and value in expr["values"]
        elif expr["operator"] == "NotIn":
            ok = ok and value not in expr["values"]
        elif expr["operator"] == "Exists":
            ok = ok and value is not None
        else:
            ok = ok and value is None
    return ok and bool(selector)


def _expand(arg: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)


def _env(container: Doc) -> dict[str, str]:
    sample = {"POD_NAME": "pod-0", "POD_NAMESPACE": "default", "POD_IP": "10.0.0.1"}
    return {e["name"]: e.get("value", sample.get(e["name"], "x")) for e in container.get("env", [])}


# --- the checks ---------------------------------------------------------------------------------
def check_references(inst: Install) -> None:
    secrets_optional: dict[str, bool] = {}
    for owner, pod in inst.pod_specs():
        if "serviceAccountName" in pod:
            inst.need("ServiceAccount", pod["serviceAccountName"], f"Deployment {owner}")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v:
                cm = inst.need("ConfigMap", v["configMap"]["name"], f"Deployment {owner} volume {v['name']}")
                for item in v["configMap"].get("items", []):
                    if cm is not None and item["key"] not in cm.get("data", {}):
                        inst.problems.append(f"{inst.name}: {owner}: ConfigMap {cm['metadata']['name']} "
                                             f"has no key {item['key']!r}")
            if "secret" in v:
                secrets_optional.setdefault(v["secret"]["secretName"], True)
                secrets_optional[v["secret"]["secretName"]] &= bool(v["secret"].get("optional"))
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {})
                if "secretKeyRef" in ref:
                    name = ref["secretKeyRef"]["name"]
                    secrets_optional.setdefault(name, True)
                    secrets_optional[name] &= bool(ref["secretKeyRef"].get("optional"))
                if "configMapKeyRef" in ref:
                    cm = inst.need("ConfigMap", ref["configMapKeyRef"]["name"], f"{owner} env {e['name']}")
                    if cm is not None and ref["configMapKeyRef"]["key"] not in cm.get("data", {}):
                        inst.problems.append(f"{inst.name}: {owner}: env {e['name']}: no such ConfigMap key")
            for arg in c.get("args", []):
                # The EPP and the P/D sidecar watch their pool by name: it must be in the build.
                if arg.startswith("--pool-name=") and not inst.partial:
                    inst.need("InferencePool", arg.split("=", 1)[1], f"{owner}/{c['name']} --pool-name")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    inst.problems.append(f"{inst.name}: {owner}/{c['name']} mounts undeclared volume {m['name']}")
            check_files(inst, owner, c, volumes, pod)
    for name, optional in secrets_optional.items():
        if inst.get("Secret", name) is None and not optional:
            inst.problems.append(f"{inst.name}: Secret {name!r} is required but not in the build "
                                 "(ship it, or mark every reference optional)")
    for rb in inst.of_kind("RoleBinding"):
        inst.need(rb["roleRef"]["kind"], rb["roleRef"]["name"], f"RoleBinding {rb['metadata']['name']}")
        for s in rb["subjects"]:
            inst.need("ServiceAccount", s["name"], f"RoleBinding {rb['metadata']['name']}")
    for pool in inst.of_kind("InferencePool"):
        ref = pool["spec"].get("endpointPickerRef") or {}
        svc = inst.need("Service", ref.get("name", ""), f"InferencePool {pool['metadata']['name']}")
        if svc is not None and ref["port"]["number"] not in [p["port"] for p in svc["spec"]["ports"]]:
            inst.problems.append(f"{inst.name}: EPP Service has no port {ref['port']['number']}")
        selector = {"matchLabels": pool["spec"]["selector"]["matchLabels"]}
        pods = [p for _, p in inst.pod_specs() if _labels_match(selector, _template_labels(inst, p))]
        if not pods and not inst.partial:
            inst.problems.append(f"{inst.name}: InferencePool {pool['metadata']['name']} selects no pods")
        for p in pods:
            ports = {port["containerPort"] for c in _containers(p) for port in c.get("ports", [])}
            for tp in pool["spec"]["targetPorts"]:
                if tp["number"] not in ports:
                    inst.problems.append(f"{inst.name}: target port {tp['number']} not served by a selected pod")
    for svc in inst.of_kind("Service"):
        if not any(_labels_match({"matchLabels": svc["spec"]["selector"]}, _template_labels(inst, p))
                   for _, p in inst.pod_specs()):
            inst.problems.append(f"{inst.name}: Service {svc['metadata']['name']} selects no pods")
    for route in inst.of_kind("HTTPRoute"):
        for parent in route["spec"]["parentRefs"]:
            inst.need("Gateway", parent["name"], f"HTTPRoute {route['metadata']['name']}")
        for rule in route["spec"]["rules"]:
            for b in rule["backendRefs"]:
                inst.need(b.get("kind", "Service"), b["name"], f"HTTPRoute {route['metadata']['name']}")
    for gw in inst.of_kind("Gateway"):
        if gw["spec"]["gatewayClassName"] not in EXTERNAL_GATEWAY_CLASSES:
            inst.need("GatewayClass", gw["spec"]["gatewayClassName"], f"Gateway {gw['metadata']['name']}")
    for dr in inst.of_kind("DestinationRule"):
        host = dr["spec"]["host"].split(".")
        inst.need("Service", host[0], f"DestinationRule {dr['metadata']['name']}")
        assert host[1] == dr["metadata"]["namespace"], "DestinationRule host in another namespace"
    for hpa in inst.of_kind("HorizontalPodAutoscaler"):
        inst.need(hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"], "the HPA")
    for mon in inst.of_kind("PodMonitor"):
        matched = [p for _, p in inst.pod_specs() if _labels_match(mon["spec"]["selector"], _template_labels(inst, p))]
        if not matched:
            inst.problems.append(f"{inst.name}: PodMonitor selects no pods")
        for p in matched:
            names = {port.get("name") for c in _containers(p) for port in c.get("ports", [])}
            for ep in mon["spec"]["podMetricsEndpoints"]:
                if ep["port"] not in names:
                    inst.problems.append(f"{inst.name}: PodMonitor port {ep['port']} missing on a selected pod")


def _template_labels(inst: Install, pod: Doc) -> dict[str, str]:
    for d in inst.docs:
        if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet") and d["spec"]["template"]["spec"] is pod:
            labels: dict[str, str] = d["spec"]["template"]["metadata"]["labels"]
            return labels
    return {}


def _mounted_file(inst: Install, c: Doc, volumes: dict[str, Doc], path: str, is_dir: bool,
                  pod: Doc) -> str | None:
    """None if `path` is provided by a volume mounted into `c`, else why not."""
    for m in sorted(c.get("volumeMounts", []), key=lambda m: -len(m["mountPath"])):
        base = m["mountPath"].rstrip("/")
        if path != base and not path.startswith(base + "/"):
            continue
        rest = path[len(base):].lstrip("/")
        vol = volumes.get(m["name"], {})
        if is_dir and not rest:
            return None
        if "configMap" in vol:
            cm = inst.get("ConfigMap", vol["configMap"]["name"])
            keys = ({i["path"] for i in vol["configMap"]["items"]} if "items" in vol["configMap"]
                    else set((cm or {}).get("data", {})))
            return None if rest in keys else f"ConfigMap volume {m['name']} has no key {rest!r}"
        if "secret" in vol or "persistentVolumeClaim" in vol or "csi" in vol or "image" in vol:
            return None  # provided by the user's Secret / volume (checked by name above)
        writers = [i["name"] for i in pod.get("initContainers", []) if i.get("restartPolicy") != "Always"
                   and any(w["name"] == m["name"] for w in i.get("volumeMounts", []))]
        if writers:
            return None  # an init container fills it before the container starts
        return f"{path} is in volume {m['name']}, which starts empty and nothing fills"
    return f"{path} is not in any volume mounted into {c['name']}"


def check_files(inst: Install, owner: str, c: Doc, volumes: dict[str, Doc], pod: Doc) -> None:
    args = [_expand(a, _env(c)) for a in c.get("args", [])]
    wanted: list[tuple[str, bool]] = []
    for a in args:
        for flag, is_dir in (("--config=", False), ("--cert-path=", True)):
            if a.startswith(flag) and c.get("image") == EPP_IMAGE:
                wanted.append((a[len(flag):], is_dir))
    for path, is_dir in list(wanted):
        if path.endswith(".yaml") and not is_dir:
            config = _config_text(inst, c, volumes, path)
            for tokenizer in _tokenizer_paths(config):
                wanted.append((tokenizer, False))
    for path, is_dir in wanted:
        why = _mounted_file(inst, c, volumes, path, is_dir, pod)
        if why is not None:
            inst.problems.append(f"{inst.name}: {owner}/{c['name']} reads {path}: {why}")


def _config_text(inst: Install, c: Doc, volumes: dict[str, Doc], path: str) -> Doc:
    for m in c.get("volumeMounts", []):
        vol = volumes.get(m["name"], {})
        if "configMap" in vol and path.startswith(m["mountPath"].rstrip("/") + "/"):
            cm = inst.get("ConfigMap", vol["configMap"]["name"]) or {}
            text = cm.get("data", {}).get(path[len(m["mountPath"].rstrip("/")) + 1:])
            if text:
                loaded: Doc = yaml.safe_load(text)
                return loaded
    return {}


def _tokenizer_paths(config: Doc) -> list[str]:
    out: list[str] = []
    for plugin in config.get("plugins", []):
        params = plugin.get("parameters") or {}
        pool = ((params.get("indexerConfig") or {}).get("tokenizersPoolConfig") or {})
        for name in (params.get("tokenizer"), pool.get("modelName")):
            if isinstance(name, str) and name.startswith("/"):
                out.append(name)
    return out


# vLLM flags the manifests use, with what vLLM accepts. Sources (vLLM v0.11, the image tag
# the manifests pin): vllm/config/cache.py (CacheConfig: enable_prefix_caching,
# prefix_caching_hash_algo Literal["sha256", "sha256_cbor"] in v0.10.2-v0.11, block_size
# Literal[1, 8, 16, 32, 64, 128], gpu_memory_utilization in (0, 1]), vllm/config/kv_events.py
# (KVEventsConfig fields), vllm/config/kv_transfer.py (KVTransferConfig kv_connector, kv_role
# in kv_producer | kv_consumer | kv_both), vllm/config/scheduler.py (max_num_seqs),
# vllm/entrypoints/openai/cli_args.py (host, port) and vllm/config/model.py (model); the
# generated reference is https://docs.vllm.ai/en/v0.10.2/api/vllm/config/cache.html and
# https://docs.vllm.ai/en/stable/configuration/engine_args.html.
KV_EVENTS_FIELDS = {"enable_kv_cache_events", "publisher", "endpoint", "replay_endpoint", "buffer_steps",
                    "hwm", "max_queue_size", "topic"}
KV_TRANSFER_FIELDS = {"kv_connector", "engine_id", "kv_buffer_device", "kv_buffer_size", "kv_role",
                      "kv_rank", "kv_parallel_size", "kv_ip", "kv_port", "kv_connector_extra_config",
                      "kv_connector_module_path"}


def _json_fields(allowed: set[str], extra: Any = None) -> Any:
    def check(value: str) -> None:
        obj = json.loads(value)
        if not isinstance(obj, dict) or not set(obj) <= allowed:
            raise ValueError(f"unknown keys {set(obj) - allowed}")
        if extra is not None:
            extra(obj)
    return check


def _in(*choices: str) -> Any:
    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"{value!r} not in {choices}")
    return check


def _fraction(value: str) -> None:
    if not 0 < float(value) <= 1:
        raise ValueError(f"{value} not in (0, 1]")


def _kv_role(obj: Doc) -> None:
    if obj.get("kv_role") not in (None, "kv_producer", "kv_consumer", "kv_both"):
        raise ValueError(f"kv_role {obj.get('kv_role')!r}")


VLLM_FLAGS: dict[str, Any] = {
    "--model": str, "--host": str, "--port": int, "--enable-prefix-caching": None,
    "--prefix-caching-hash-algo": _in("sha256", "sha256_cbor"),
    "--block-size": _in("1", "8", "16", "32", "64", "128"),
    "--kv-events-config": _json_fields(KV_EVENTS_FIELDS),
    "--kv-transfer-config": _json_fields(KV_TRANSFER_FIELDS, _kv_role),
    "--max-num-seqs": int, "--gpu-memory-utilization": _fraction,
}


def check_args(inst: Install) -> None:
    from epp.cli import build_parser

    parser = build_parser()
    for owner, pod in inst.pod_specs():
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            args = [_expand(a, _env(c)) for a in c.get("args", [])]
            command = c.get("command") or []
            where = f"{inst.name}: {owner}/{c['name']}"
            if c["image"] == EPP_IMAGE:
                sub = command[1:] if command[:1] == ["epp"] else ["serve"]  # the image's ENTRYPOINT
                try:
                    parser.parse_args([*sub, *args])
                except SystemExit:
                    inst.problems.append(f"{where}: `epp {' '.join(sub)}` rejects {args}")
            elif c["image"].startswith("vllm/vllm-openai:"):
                positional = command[-1:] == ["serve"]  # `vllm serve MODEL ...`
                inst.problems += [f"{where}: {p}" for p in vllm_arg_problems(args, positional_model=positional)]
            else:
                inst.problems.append(f"{where}: no known CLI for image {c['image']}")


def vllm_arg_problems(args: list[str], positional_model: bool) -> list[str]:
    problems: list[str] = []
    i = 1 if positional_model and args and not args[0].startswith("-") else 0
    while i < len(args):
        arg = args[i]
        flag, eq, value = arg.partition("=")
        check = VLLM_FLAGS.get(flag, "?")
        if check == "?":
            problems.append(f"vLLM has no flag {flag}")
            i += 1
            continue
        if check is None:
            i += 1
            continue
        if not eq:
            i += 1
            value = args[i] if i < len(args) else ""
        try:
            check(value)
        except ValueError as e:
            problems.append(f"{flag}={value}: {e}")
        i += 1
    return problems


def exported_metric_names() -> set[str]:
    """Sample names the simulator (vLLM's set), the sidecar and the EPP really export."""
    from prometheus_client import CollectorRegistry

    from epp.datastore.datastore import Datastore
    from epp.observability.metrics import EPPMetrics
    from epp.sidecar.metrics import SidecarMetrics
    from epp.sim.metrics import VllmMetrics

    registries = [VllmMetrics("m", 4096, 4, {"block_size": "16"}).registry, SidecarMetrics().registry]
    epp_registry = CollectorRegistry()
    EPPMetrics(registry=epp_registry, datastore=Datastore())
    registries.append(epp_registry)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names: set[str] = set()
    for registry in registries:
        for fam in registry.collect():
            names.update(s.name for s in fam.samples)
            # Labelled families without children yet have no samples: add what they will export.
            names.update(fam.name + suffix for suffix in suffixes.get(fam.type, [""]))
    return names


_PROMQL_METRIC = re.compile(r"(?<![\w:])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?=\{|\[|\)|$|\s*[<>=!/*+-])")
_PROMQL_WORDS = {"sum", "avg", "max", "min", "count", "rate", "irate", "increase", "by", "without",
                 "histogram_quantile", "clamp_min", "clamp_max", "le", "on", "ignoring", "and", "or",
                 "unless", "bool", "offset", "topk", "bottomk", "abs", "label_values", "namespace",
                 "model_name", "error_code"}


def metrics_in(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values are not metric names
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)
    expr = re.sub(r"<<[^>]*>>", "", expr)  # prometheus-adapter template fields
    found = {m for m in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
             if m not in _PROMQL_WORDS and not re.fullmatch(r"\d.*|e\d+", m)}
    return {m for m in found if "_" in m or ":" in m}


def monitoring_exprs() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    rule = yaml.safe_load((DEPLOY / "vllm" / "vllm-prometheusrule.yaml").read_text())
    out["vllm-prometheusrule.yaml"] = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    dash = json.loads((DEPLOY / "vllm" / "grafana-dashboard.json").read_text())
    out["grafana-dashboard.json"] = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    out["grafana-dashboard.json"] += [v["query"] for v in dash.get("templating", {}).get("list", [])
                                      if v.get("type") == "query"]
    adapter = yaml.safe_load((DEPLOY / "vllm" / "prometheus-adapter-values.yaml").read_text())
    out["prometheus-adapter-values.yaml"] = [
        r[k] for r in adapter["rules"]["external"] for k in ("seriesQuery", "metricsQuery")]
    return out


# --- tests --------------------------------------------------------------------------------------
def test_there_are_kustomizations_and_components() -> None:
    names = {str(d.relative_to(DEPLOY)) for d in KUSTOMIZATIONS}
    assert {"gateway-api", "vllm", "vllm/pd", "sim"} <= names
    assert {c.name for c in COMPONENTS} == {"agentgateway", "istio", "envoy-ai-gateway"}


def _builds(tmp_path_factory: pytest.TempPathFactory) -> list[Install]:
    builds = [Install(str(d.relative_to(REPO)), kustomize(d)) for d in KUSTOMIZATIONS]
    for comp in COMPONENTS:
        tmp = tmp_path_factory.mktemp(comp.name)
        builds.append(Install(f"deploy/gateway-api + {comp.relative_to(REPO)}", kustomize(_with_component(comp, tmp))))
    return builds


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Install]:
    return {b.name: b for b in _builds(tmp_path_factory)}


def _monitoring(*, with_hpa: bool) -> list[Doc]:
    docs = [d for p in MONITORING if with_hpa or p.name != "vllm-hpa.yaml" for d in yaml.safe_load_all(p.read_text())]
    return [d for d in docs if d]


def installs(builds: dict[str, Install]) -> list[Install]:
    """What docs/kubernetes.md tells a user to apply together."""
    out = [Install(name, list(b.docs)) for name, b in builds.items()]
    agg = builds["deploy/gateway-api"].docs + builds["deploy/vllm"].docs + _monitoring(with_hpa=True)
    out.append(Install("aggregated install (gateway-api + vllm + monitoring)", agg))
    pd = builds["deploy/vllm/pd"].docs + _monitoring(with_hpa=False)
    out.append(Install("P/D install (vllm/pd + monitoring)", pd))
    out.append(Install("CPU install (sim + monitoring)", builds["deploy/sim"].docs + _monitoring(with_hpa=False)))
    return out


def test_every_reference_resolves_within_its_build(builds: dict[str, Install]) -> None:
    problems: list[str] = []
    for inst in installs(builds):
        inst.partial = inst.name.startswith("deploy/gateway-api")
        check_references(inst)
        problems += inst.problems
    assert problems == []


def test_every_container_argument_is_accepted(builds: dict[str, Install]) -> None:
    problems: list[str] = []
    for inst in builds.values():
        check_args(inst)
        problems += inst.problems
    assert problems == []


def test_every_monitored_metric_is_exported() -> None:
    exported = exported_metric_names()
    unknown = {f"{src}: {m}" for src, exprs in monitoring_exprs().items() for e in exprs
               for m in metrics_in(e) if m not in exported}
    assert unknown == set()


def test_one_epp_image_for_every_epp_command(builds: dict[str, Install]) -> None:
    images = {c["image"] for inst in builds.values() for _, pod in inst.pod_specs()
              for c in pod.get("containers", []) + pod.get("initContainers", [])
              if c["image"].split("/")[-1].split(":")[0] in ("llm-epp", "epp")
              or (c.get("command") or [""])[0] == "epp"}
    assert images == {EPP_IMAGE}


def test_one_hash_setting_for_pods_and_epp(builds: dict[str, Install]) -> None:
    """Block size, hash algorithm and PYTHONHASHSEED of every model-server container equal the
    tokenProcessorConfig of the precise scorer in the EPP config of the same build."""
    for name in ("deploy/vllm/pd", "deploy/sim"):
        _check_hash_setting(builds[name].docs, name)
    _check_hash_setting(builds["deploy/gateway-api"].docs + builds["deploy/vllm"].docs, "aggregated")


def _check_hash_setting(docs: list[Doc], name: str) -> None:
    inst = Install(name, docs)
    (cm,) = [d for d in inst.of_kind("ConfigMap") if d["metadata"]["name"].endswith("-epp-config")]
    config = yaml.safe_load(cm["data"]["config.yaml"])
    (precise,) = [p for p in config["plugins"] if p["type"] == "precise-prefix-cache-scorer"]
    tp = precise["parameters"]["tokenProcessorConfig"]
    want = {"block": str(tp["blockSize"]), "algo": tp["hashAlgo"], "seed": str(tp["hashSeed"])}
    servers = 0
    for owner, pod in inst.pod_specs():
        for c in pod["containers"]:
            args = c.get("args", [])
            joined = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if a.startswith("--") and "=" in a}
            if "--block-size" not in joined:
                continue
            servers += 1
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            got = {"block": joined["--block-size"], "algo": joined.get("--prefix-caching-hash-algo", "sha256"),
                   "seed": env.get("PYTHONHASHSEED")}
            assert got == want, f"{name}: {owner}/{c['name']} hashes with {got}, the EPP with {want}"
    assert servers >= 1, f"{name}: no model server found"


def test_checker_catches_broken_references(builds: dict[str, Install]) -> None:
    """The checks are not vacuous: break a copy of the P/D build in each way issue 17 found."""
    base = builds["deploy/vllm/pd"].docs
    broken = json.loads(json.dumps(base))
    svc = next(d for d in broken if d["kind"] == "Service")
    svc["metadata"]["name"] = "renamed"
    cm = next(d for d in broken if d["kind"] == "ConfigMap")
    cm["data"] = {"epp-config-pd.yaml": cm["data"]["config.yaml"]}
    epp = next(d for d in broken if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-epp"))
    epp["spec"]["template"]["spec"]["containers"][0]["args"].append("--no-such-flag")
    epp["spec"]["template"]["spec"]["serviceAccountName"] = "nobody"
    inst = Install("broken", broken)
    check_references(inst)
    check_args(inst)
    text = "\n".join(inst.problems)
    assert "names Service 'vllm-llama3-8b-instruct-epp'" in text
    assert "reads /etc/epp/config.yaml: ConfigMap volume config has no key 'config.yaml'" in text
    assert "rejects" in text and "names ServiceAccount 'nobody'" in text
    assert vllm_arg_problems(["--block-size=17", "--kv-events-config", '{"topics": "x"}', "--bogus"],
                             positional_model=False) == [
        "--block-size=17: '17' not in ('1', '8', '16', '32', '64', '128')",
        "--kv-events-config={\"topics\": \"x\"}: unknown keys {'topics'}", "vLLM has no flag --bogus"]
    assert metrics_in('sum(rate(vllm:prefix_cache_hits{namespace="$namespace"}[5m])) / 2') == {
        "vllm:prefix_cache_hits"}
    assert "vllm:prefix_cache_hits" not in exported_metric_names()  # the old panel's wrong name
