"""Local endpoint source: the pool, its pods and objectives from files (no Kubernetes).

Inputs
- an InferencePool manifest (`inference.networking.k8s.io/v1`: spec.selector.matchLabels,
  spec.targetPorts[].number, spec.endpointPickerRef{name, port.number, failureMode}; the
  older `inference.networking.x-k8s.io/v1alpha2` shape with a plain-map `selector`,
  `targetPortNumber` and `extensionRef{name, portNumber, failureMode}` is accepted too);
- an endpoints file: a YAML/JSON list of pods `{name, namespace?, ip, port?, labels?, ready?}`
  (or a mapping with a `pods:` list), standing in for the Pods the selector would match;
  `port` replaces the pool's target ports for that pod (several simulators on one IP);
- optional objective manifests: InferenceObjective (`inference.networking.x-k8s.io/v1alpha2`,
  spec.priority, spec.poolRef) and legacy InferenceModel (spec.modelName, spec.criticality,
  spec.targetModels[{name, weight}], spec.poolRef).

Every ready pod in the pool's namespace whose labels match the selector becomes one
Endpoint per target port (named `<pod>` for a single port, `<pod>-rank-<i>` for several,
as GIE names data-parallel ranks). `LocalEndpointSource` polls the files' mtimes and
reconciles the datastore on change; a broken edit is logged and the last good state kept.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from epp.aio import cancel_and_wait
from epp.datastore.datastore import Datastore, InferenceObjective, PoolSpec
from epp.datastore.endpoint import Endpoint
from epp.rollout.api import ModelRewrite, RewriteError, rewrites_from_documents

log = logging.getLogger(__name__)

POOL_API_GROUPS = ("inference.networking.k8s.io", "inference.networking.x-k8s.io")
# llm-d.ai: where the llm-d router ships InferenceObjective since GIE v1.6 dropped it.
OBJECTIVE_API_GROUPS = ("llm-d.ai", "inference.networking.x-k8s.io")
FAILURE_MODES = ("FailOpen", "FailClose")
# InferenceModel criticality -> InferenceObjective priority (v1alpha1 said Default, v1alpha2 Standard).
CRITICALITY_PRIORITY = {"Critical": 1, "Standard": 0, "Default": 0, "Normal": 0, "Sheddable": -1}


class LocalSourceError(ValueError):
    """A problem in a local manifest; the message names the file and the field."""


@dataclass(slots=True, frozen=True)
class LocalPod:
    """One entry of the local endpoints file (what a Pod would tell us)."""

    name: str
    ip: str
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True
    # Local stand-in only: pods sharing one IP (127.0.0.1) need their own port, which
    # replaces the pool's targetPorts for this pod.
    port: int | None = None


# --- file reading -------------------------------------------------------------------------


def _load_documents(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise LocalSourceError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise LocalSourceError(f"{path}: invalid YAML: {e}") from None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LocalSourceError(f"{where}: must be a mapping, got {type(value).__name__}")
    return value


def _string(value: Any, where: str, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise LocalSourceError(f"{where}: must be a non-empty string, got {value!r}")
    return value


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise LocalSourceError(f"{where}: must be a port number 1..65535, got {value!r}")
    return value


def _labels(value: Any, where: str) -> dict[str, str]:
    labels = _mapping(value, where)
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str | int | float | bool):
            raise LocalSourceError(f"{where}: label {k!r} must map a string to a string, got {v!r}")
    # YAML turns `tier: 1` into an int; Kubernetes label values are strings.
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in labels.items()}


def _api_group(api_version: Any) -> str:
    return api_version.split("/", 1)[0] if isinstance(api_version, str) else ""


# --- InferencePool --------------------------------------------------------------------------


def parse_pool(doc: Mapping[str, Any], source: str) -> PoolSpec:
    """PoolSpec from one InferencePool object (v1 or v1alpha2 shape)."""
    meta = _mapping(doc.get("metadata"), f"{source}: metadata")
    name = _string(meta.get("name"), f"{source}: metadata.name")
    namespace = _string(meta.get("namespace"), f"{source}: metadata.namespace", required=False) or "default"
    spec = _mapping(doc.get("spec"), f"{source}: spec")
    if not spec:
        raise LocalSourceError(f"{source}: spec: missing")
    where = f"{source}: InferencePool {name!r}"

    raw_selector = spec.get("selector")
    if raw_selector is None:
        raise LocalSourceError(f"{where}: spec.selector: missing")
    selector_map = _mapping(raw_selector, f"{where}: spec.selector")
    if "matchLabels" in selector_map or "matchExpressions" in selector_map:
        if selector_map.get("matchExpressions"):
            raise LocalSourceError(f"{where}: spec.selector.matchExpressions: not supported, use matchLabels")
        selector = _labels(selector_map.get("matchLabels"), f"{where}: spec.selector.matchLabels")
    else:
        selector = _labels(selector_map, f"{where}: spec.selector")  # v1alpha2 plain map
    if not selector:
        raise LocalSourceError(f"{where}: spec.selector: must select at least one label")

    if "targetPorts" in spec:
        ports_raw = spec["targetPorts"]
        if not isinstance(ports_raw, list) or not ports_raw:
            raise LocalSourceError(f"{where}: spec.targetPorts: must be a non-empty list")
        ports: list[int] = []
        for i, item in enumerate(ports_raw):
            entry = _mapping(item, f"{where}: spec.targetPorts[{i}]")
            ports.append(_port(entry.get("number"), f"{where}: spec.targetPorts[{i}].number"))
        if len(set(ports)) != len(ports):
            raise LocalSourceError(f"{where}: spec.targetPorts: duplicate port numbers {ports}")
    elif "targetPortNumber" in spec:
        ports = [_port(spec["targetPortNumber"], f"{where}: spec.targetPortNumber")]
    else:
        raise LocalSourceError(f"{where}: spec.targetPorts: missing")

    picker_name, picker_port, failure_mode = "", 9002, "FailClose"
    if "endpointPickerRef" in spec:
        ref_where = f"{where}: spec.endpointPickerRef"
        ref = _mapping(spec["endpointPickerRef"], ref_where)
        picker_name = _string(ref.get("name"), f"{ref_where}.name")
        if "port" in ref:
            port_ref = _mapping(ref["port"], f"{ref_where}.port")
            picker_port = _port(port_ref.get("number"), f"{ref_where}.port.number")
        failure_mode = ref.get("failureMode", failure_mode)
        mode_where = f"{ref_where}.failureMode"
    elif "extensionRef" in spec:
        ref_where = f"{where}: spec.extensionRef"
        ref = _mapping(spec["extensionRef"], ref_where)
        picker_name = _string(ref.get("name"), f"{ref_where}.name")
        if "portNumber" in ref:
            picker_port = _port(ref["portNumber"], f"{ref_where}.portNumber")
        failure_mode = ref.get("failureMode", failure_mode)
        mode_where = f"{ref_where}.failureMode"
    else:
        mode_where = ""
    if failure_mode not in FAILURE_MODES:
        raise LocalSourceError(f"{mode_where}: must be one of {list(FAILURE_MODES)}, got {failure_mode!r}")

    return PoolSpec(
        name=name, namespace=namespace, selector=selector, target_ports=tuple(ports),
        endpoint_picker_name=picker_name, endpoint_picker_port=picker_port, failure_mode=failure_mode,
    )


def load_pool_manifest(path: str | os.PathLike[str], pool_name: str = "") -> PoolSpec:
    """The InferencePool in a (possibly multi-document) YAML file; `pool_name` picks one
    when the file holds several."""
    p = Path(path)
    pools = []
    for i, doc in enumerate(_load_documents(p)):
        if not isinstance(doc, dict):
            raise LocalSourceError(f"{p}: document {i}: must be a mapping")
        if doc.get("kind") == "InferencePool":
            if _api_group(doc.get("apiVersion")) not in POOL_API_GROUPS:
                raise LocalSourceError(
                    f"{p}: document {i}: apiVersion: InferencePool must be in group "
                    f"{' or '.join(POOL_API_GROUPS)}, got {doc.get('apiVersion')!r}"
                )
            pools.append(parse_pool(doc, str(p)))
    if pool_name:
        pools = [pool for pool in pools if pool.name == pool_name]
    if not pools:
        wanted = f" named {pool_name!r}" if pool_name else ""
        raise LocalSourceError(f"{p}: no InferencePool{wanted} found (kind: InferencePool)")
    if len(pools) > 1:
        names = ", ".join(pool.name for pool in pools)
        raise LocalSourceError(f"{p}: several InferencePools ({names}); choose one by name")
    return pools[0]


# --- endpoints file -------------------------------------------------------------------------


def load_endpoints_file(path: str | os.PathLike[str]) -> list[LocalPod]:
    p = Path(path)
    docs = _load_documents(p)
    if len(docs) != 1:
        raise LocalSourceError(f"{p}: expected one YAML/JSON document with a list of pods, got {len(docs)}")
    doc = docs[0]
    if isinstance(doc, dict):
        if "pods" not in doc:
            raise LocalSourceError(f"{p}: pods: missing (expected a list of pods or a mapping with 'pods')")
        doc = doc["pods"]
    if not isinstance(doc, list):
        raise LocalSourceError(f"{p}: pods: must be a list, got {type(doc).__name__}")
    pods: list[LocalPod] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(doc):
        where = f"{p}: pods[{i}]"
        entry = _mapping(item, where)
        unknown = set(entry) - {"name", "namespace", "ip", "port", "labels", "ready"}
        if unknown:
            raise LocalSourceError(f"{where}: unknown field(s) {sorted(unknown)} "
                                   "(known: name, namespace, ip, port, labels, ready)")
        name = _string(entry.get("name"), f"{where}.name")
        namespace = _string(entry.get("namespace"), f"{where}.namespace", required=False) or "default"
        ip = _string(entry.get("ip"), f"{where}.ip")
        ready = entry.get("ready", True)
        if not isinstance(ready, bool):
            raise LocalSourceError(f"{where}.ready: must be true or false, got {ready!r}")
        if (namespace, name) in seen:
            raise LocalSourceError(f"{where}.name: duplicate pod {namespace}/{name}")
        seen.add((namespace, name))
        port = _port(entry["port"], f"{where}.port") if entry.get("port") is not None else None
        pods.append(LocalPod(name=name, ip=ip, namespace=namespace,
                             labels=_labels(entry.get("labels"), f"{where}.labels"), ready=ready, port=port))
    return pods


def endpoints_for_pool(pool: PoolSpec, pods: Iterable[LocalPod]) -> list[Endpoint]:
    """Endpoints of the ready pods the pool selects: one per target port."""
    out: list[Endpoint] = []
    multi = len(pool.target_ports) > 1
    for pod in pods:
        if not pod.ready or pod.namespace != pool.namespace or not pool.selects(dict(pod.labels)):
            continue
        ports = (pod.port,) if pod.port is not None else pool.target_ports
        for rank, port in enumerate(ports):
            name = f"{pod.name}-rank-{rank}" if multi and pod.port is None else pod.name
            out.append(Endpoint(name=name, address=pod.ip, port=port, namespace=pod.namespace,
                                labels=dict(pod.labels)))
    return out


# --- objectives -------------------------------------------------------------------------------


def _pool_ref(spec: Mapping[str, Any], where: str) -> str:
    ref = spec.get("poolRef")
    if ref is None:
        return ""
    return _string(_mapping(ref, f"{where}: spec.poolRef").get("name"), f"{where}: spec.poolRef.name")


def parse_objective(doc: Mapping[str, Any], source: str) -> InferenceObjective:
    """InferenceObjective or legacy InferenceModel -> InferenceObjective.

    An InferenceObjective is looked up by its metadata name (requests name it in the
    `x-llm-d-inference-objective` header, or its alias `x-gateway-inference-objective`); early
    v1alpha2 objectives carried `spec.modelName`, which is used instead when present.
    """
    kind = doc.get("kind")
    meta = _mapping(doc.get("metadata"), f"{source}: metadata")
    name = _string(meta.get("name"), f"{source}: metadata.name")
    where = f"{source}: {kind} {name!r}"
    spec = _mapping(doc.get("spec"), f"{where}: spec")
    pool = _pool_ref(spec, where)
    if kind == "InferenceObjective":
        priority = spec.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise LocalSourceError(f"{where}: spec.priority: must be an integer, got {priority!r}")
        model = _string(spec.get("modelName"), f"{where}: spec.modelName", required=False) or name
        return InferenceObjective(name=name, model_name=model, priority=priority, pool_name=pool)
    # InferenceModel
    model = _string(spec.get("modelName"), f"{where}: spec.modelName")
    criticality = spec.get("criticality", "Standard")
    if criticality not in CRITICALITY_PRIORITY:
        raise LocalSourceError(f"{where}: spec.criticality: must be one of Critical, Standard, Sheddable; "
                               f"got {criticality!r}")
    targets: list[tuple[str, int]] = []
    raw_targets = spec.get("targetModels") or []
    if not isinstance(raw_targets, list):
        raise LocalSourceError(f"{where}: spec.targetModels: must be a list")
    for i, item in enumerate(raw_targets):
        t_where = f"{where}: spec.targetModels[{i}]"
        entry = _mapping(item, t_where)
        t_name = _string(entry.get("name"), f"{t_where}.name")
        weight = entry.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise LocalSourceError(f"{t_where}.weight: must be a non-negative integer, got {weight!r}")
        targets.append((t_name, weight))
    return InferenceObjective(name=name, model_name=model, priority=CRITICALITY_PRIORITY[criticality],
                              pool_name=pool, target_models=tuple(targets))


def load_objectives(path: str | os.PathLike[str], pool_name: str = "") -> list[InferenceObjective]:
    """Objectives in a multi-document YAML file; with `pool_name`, only those whose poolRef
    names that pool (or that have no poolRef). Other kinds are ignored."""
    p = Path(path)
    out: list[InferenceObjective] = []
    seen: dict[str, str] = {}
    for i, doc in enumerate(_load_documents(p)):
        if not isinstance(doc, dict):
            raise LocalSourceError(f"{p}: document {i}: must be a mapping")
        if doc.get("kind") not in ("InferenceObjective", "InferenceModel"):
            continue
        if _api_group(doc.get("apiVersion")) not in OBJECTIVE_API_GROUPS:
            raise LocalSourceError(f"{p}: document {i}: apiVersion: {doc.get('kind')} must be in group "
                                   f"{' or '.join(OBJECTIVE_API_GROUPS)}, got {doc.get('apiVersion')!r}")
        obj = parse_objective(doc, str(p))
        if pool_name and obj.pool_name and obj.pool_name != pool_name:
            continue
        if obj.model_name in seen:
            raise LocalSourceError(f"{p}: document {i}: {obj.name!r} uses model name {obj.model_name!r} "
                                   f"already used by {seen[obj.model_name]!r}")
        seen[obj.model_name] = obj.name
        out.append(obj)
    return out


# --- the source -----------------------------------------------------------------------------


@dataclass(slots=True)
class LocalState:
    pool: PoolSpec
    endpoints: list[Endpoint]
    objectives: list[InferenceObjective]
    rewrites: list[ModelRewrite] = field(default_factory=list)


class LocalEndpointSource:
    """Feeds a Datastore from local files and keeps it in sync while they change."""

    def __init__(self, datastore: Datastore, pool_path: str | os.PathLike[str],
                 endpoints_path: str | os.PathLike[str],
                 objective_paths: Sequence[str | os.PathLike[str]] = (),
                 pool_name: str = "", poll_interval: float = 1.0) -> None:
        self.datastore = datastore
        self.pool_path = Path(pool_path)
        self.endpoints_path = Path(endpoints_path)
        self.objective_paths = [Path(p) for p in objective_paths]
        self.pool_name = pool_name
        self.poll_interval = poll_interval
        self.reloads = 0
        self.last_error: str | None = None
        self._mtimes: tuple[tuple[int, int] | None, ...] = ()
        self._task: asyncio.Task[None] | None = None

    def _paths(self) -> list[Path]:
        return [self.pool_path, self.endpoints_path, *self.objective_paths]

    def _stat(self) -> tuple[tuple[int, int] | None, ...]:
        out: list[tuple[int, int] | None] = []
        for p in self._paths():
            try:
                st = p.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def read(self) -> LocalState:
        pool = load_pool_manifest(self.pool_path, self.pool_name)
        endpoints = endpoints_for_pool(pool, load_endpoints_file(self.endpoints_path))
        objectives: list[InferenceObjective] = []
        seen: set[str] = set()
        for path in self.objective_paths:
            for obj in load_objectives(path, pool.name):
                if obj.model_name in seen:
                    raise LocalSourceError(f"{path}: model name {obj.model_name!r} defined in several files")
                seen.add(obj.model_name)
                objectives.append(obj)
        rewrites: list[ModelRewrite] = []
        for path in self.objective_paths:  # InferenceModelRewrites live beside the objectives
            try:
                found = rewrites_from_documents(_load_documents(path), f"{path}: ", pool.name)
            except RewriteError as e:
                raise LocalSourceError(str(e)) from None
            for rewrite in found:
                if any(r.name == rewrite.name for r in rewrites):
                    raise LocalSourceError(f"{path}: InferenceModelRewrite {rewrite.name!r} defined in several files")
            rewrites += found
        return LocalState(pool, endpoints, objectives, rewrites)

    def sync(self) -> LocalState:
        """Read all files and reconcile the datastore. Raises LocalSourceError, leaving the
        datastore untouched, when a file is invalid."""
        self._mtimes = self._stat()
        state = self.read()
        self.apply(state)
        self.reloads += 1
        self.last_error = None
        return state

    def apply(self, state: LocalState) -> None:
        ds = self.datastore
        ds.set_pool(state.pool)
        wanted = {ep.key: ep for ep in state.endpoints}
        for ep in ds.endpoints():
            if ep.key not in wanted:
                ds.remove_endpoint(ep.key)
        for ep in state.endpoints:
            ds.upsert_endpoint(ep)
        wanted_models = {o.model_name for o in state.objectives}
        for obj in ds.objectives():
            if obj.model_name not in wanted_models:
                ds.remove_objective(obj.model_name)
        for obj in state.objectives:
            ds.upsert_objective(obj)
        ds.model_rewrites.replace_all(state.rewrites)
        log.info("local source: pool %s/%s, %d endpoints, %d objectives, %d model rewrites",
                 state.pool.namespace, state.pool.name, len(state.endpoints), len(state.objectives),
                 len(state.rewrites))

    def poll_once(self) -> bool:
        """Reload if any file changed since the last sync; returns whether it reloaded."""
        mtimes = self._stat()
        if mtimes == self._mtimes:
            return False
        try:
            self.sync()
        except LocalSourceError as e:
            if str(e) != self.last_error:
                log.error("local source: keeping the last good state: %s", e)
            self.last_error = str(e)
            return False
        return True

    async def start(self) -> None:
        """Initial sync (raises on invalid files), then watch in the background."""
        if self._task is not None:
            return
        self.sync()
        self._task = asyncio.create_task(self._watch(), name="local-endpoint-source")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            self.poll_once()
