"""Kubernetes data source of the Datastore: InferencePool, its Pods, InferenceObjectives.

    source = KubernetesSource(options, datastore, on_config_change=server.reload_config,
                              config_path=args.config)
    await source.start()          # returns at once; state arrives in the background
    source.synced()               # readiness: pool seen, pods and objectives listed
    source.is_leader()            # True when leader election is off, or we hold the Lease
    await source.stop()

Reflectors (epp.k8s.reflector) keep three collections in sync:
- the InferencePool (field selector metadata.name=<pool>) -> Datastore.set_pool;
- the Pods matching the pool selector (server-side label selector; restarted when the
  selector changes) -> one Endpoint per target port for every Ready pod with a podIP and no
  deletionTimestamp; other pods are removed, so endpoints() only holds routable pods;
- InferenceObjectives whose poolRef names the pool (and legacy InferenceModels on request).
All callbacks run on the event loop, and the Datastore swaps its cached tuples atomically,
so a reader of healthy_endpoints() never sees a half-applied change.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes_asyncio import client as k8s_client

from epp.datastore.datastore import Datastore, PoolSpec
from epp.k8s.cli import KubernetesOptions
from epp.k8s.client import new_api_client
from epp.k8s.config_watch import ConfigChangeCallback, ConfigFileWatcher
from epp.k8s.leader import LeaderElector, LeadershipCallback, LeaseConfig
from epp.k8s.reflector import JSON, Reflector, ReflectorTask, ResourceRef
from epp.k8s.resources import (
    GROUP_LLMD,
    GROUP_X,
    OBJECTIVE_GROUPS,
    OBJECTIVE_VERSION,
    POOL_VERSION_BY_GROUP,
    PodState,
    ResourceError,
    label_selector_string,
    objective_pool_name,
    parse_inference_objective,
    parse_inference_pool,
    parse_pod,
    pod_endpoints,
)
from epp.k8s.rewrites import RewriteGroups
from epp.rollout.api import GROUPS as REWRITE_GROUPS
from epp.rollout.api import PLURAL as REWRITE_PLURAL
from epp.rollout.api import VERSION as REWRITE_VERSION

log = logging.getLogger(__name__)


class _PoolHandler:
    def __init__(self, source: KubernetesSource) -> None:
        self._source = source

    def replace(self, items: list[JSON]) -> None:
        mine = [o for o in items if (o.get("metadata") or {}).get("name") == self._source.options.pool_name]
        if mine:
            self._source._apply_pool(mine[0])
        else:
            self._source._clear_pool("not found")

    def event(self, event_type: str, obj: JSON) -> None:
        if (obj.get("metadata") or {}).get("name") != self._source.options.pool_name:
            return
        if event_type == "DELETED":
            self._source._clear_pool("deleted")
        else:
            self._source._apply_pool(obj)


class _PodHandler:
    def __init__(self, source: KubernetesSource) -> None:
        self._source = source

    def replace(self, items: list[JSON]) -> None:
        pods = {p.name: p for p in map(parse_pod, items)}
        for gone in set(self._source._pods) - set(pods):
            self._source._forget_pod(gone)
        for pod in pods.values():
            self._source._sync_pod(pod)

    def event(self, event_type: str, obj: JSON) -> None:
        pod = parse_pod(obj)
        if event_type == "DELETED":
            self._source._forget_pod(pod.name)
        else:
            self._source._sync_pod(pod)


# Where the InferenceObjective CRD comes from: GIE stopped shipping it in v1.6; the llm-d
# router carries it on, in group llm-d.ai (and still reads the legacy group). Named in the
# warning below.
OBJECTIVE_CRD_HINT = ("GIE >= v1.6 no longer ships this CRD; install the llm-d router's "
                      "(llm-d.ai/v1alpha2, config/crd/bases/llm-d.ai_inferenceobjectives.yaml in "
                      "llm-d/llm-d-router) or this repository's legacy copy "
                      "(deploy/crds/inference.networking.x-k8s.io_inferenceobjectives.yaml)")


class _ObjectiveHandler:
    """InferenceObjectives (or InferenceModels) of the pool in one API group; keyed by name.

    A legacy-group handler is passive while the llm-d.ai group is served (the reference's
    rule: prefer the new group, ignore the legacy one); it keeps the objects it saw so that it
    can take over if the new group goes away.
    """

    def __init__(self, source: KubernetesSource, kind: str, group: str = GROUP_X) -> None:
        self._source = source
        self._kind = kind
        self.group = group
        self._model_by_name: dict[str, str] = {}
        self._objects: dict[str, JSON] = {}  # what the API server holds for the pool, by name
        self.active = True

    def missing(self, missing: bool) -> None:
        self._source._objective_crd_state(self, missing)

    def set_active(self, active: bool) -> None:
        if active == self.active:
            return
        self.active = active
        if active:
            for obj in list(self._objects.values()):
                self._upsert(obj)
        else:
            for name in list(self._model_by_name):
                self._remove(name)

    def _mine(self, obj: JSON) -> bool:
        return objective_pool_name(obj) == self._source.options.pool_name

    def replace(self, items: list[JSON]) -> None:
        self._objects = {}
        for obj in items:
            if self._mine(obj):
                self._objects[str((obj.get("metadata") or {}).get("name", ""))] = obj
                self._upsert(obj)
        for name in set(self._model_by_name) - set(self._objects):
            self._remove(name)

    def event(self, event_type: str, obj: JSON) -> None:
        name = str((obj.get("metadata") or {}).get("name", ""))
        if event_type == "DELETED" or not self._mine(obj):
            self._objects.pop(name, None)
            self._remove(name)  # also handles a poolRef moved to another pool
        else:
            self._objects[name] = obj
            self._upsert(obj)

    def _upsert(self, obj: JSON) -> None:
        if not self.active:
            return
        obj.setdefault("kind", self._kind)
        try:
            objective = parse_inference_objective(obj)
        except ResourceError as e:
            log.error("ignoring %s", e)
            return
        old_model = self._model_by_name.get(objective.name)
        if old_model is not None and old_model != objective.model_name:
            self._source.datastore.remove_objective(old_model)
        self._model_by_name[objective.name] = objective.model_name
        self._source.datastore.upsert_objective(objective)

    def _remove(self, name: str) -> None:
        model = self._model_by_name.pop(name, None)
        if model is not None:
            self._source.datastore.remove_objective(model)


class KubernetesSource:
    def __init__(
        self,
        options: KubernetesOptions,
        datastore: Datastore,
        on_config_change: ConfigChangeCallback | None = None,
        *,
        config_path: str | None = None,
        api_client: k8s_client.ApiClient | None = None,
        on_started_leading: LeadershipCallback | None = None,
        on_stopped_leading: LeadershipCallback | None = None,
        missing_crd_retry_s: float = 10.0,
    ) -> None:
        self.options = options
        self.datastore = datastore
        self._api = api_client
        self._owns_api = api_client is None
        self._pods: dict[str, PodState] = {}  # all pods the pod watch reported, routable or not
        self._pod_keys: dict[str, list[str]] = {}  # pod name -> its endpoint keys in the datastore
        self._pool_task: ReflectorTask | None = None
        self._pod_task: ReflectorTask | None = None
        self._pod_selector: dict[str, str] | None = None
        self._objective_tasks: list[ReflectorTask] = []
        self._rewrite_tasks: list[ReflectorTask] = []  # InferenceModelRewrites (epp/k8s/rewrites.py)
        self._objective_handlers: list[_ObjectiveHandler] = []
        self._crd_missing: dict[tuple[str, str], bool] = {}  # (kind, group) -> not served
        self._warned_no_objectives = False
        self._missing_crd_retry_s = missing_crd_retry_s
        self._pool_deleted = False
        self.leader: LeaderElector | None = None
        self._leader_callbacks = (on_started_leading, on_stopped_leading)
        self.config_watcher: ConfigFileWatcher | None = None
        if config_path and on_config_change is not None:
            self.config_watcher = ConfigFileWatcher(
                config_path, on_config_change, options.config_watch_interval_s
            )

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        if self._api is None:
            self._api = await new_api_client(self.options.kubeconfig)
        opts = self.options
        pool_ref = ResourceRef(
            "inferencepools", opts.pool_namespace, opts.pool_group, POOL_VERSION_BY_GROUP[opts.pool_group]
        )
        self._pool_task = ReflectorTask(
            Reflector(self._api, pool_ref, _PoolHandler(self),
                      field_selector=f"metadata.name={opts.pool_name}", watch_timeout_s=opts.watch_timeout_s)
        )
        self._pool_task.start()
        objective_refs = [("inferenceobjectives", "InferenceObjective", g) for g in OBJECTIVE_GROUPS]
        if opts.watch_inference_models:
            objective_refs.append(("inferencemodels", "InferenceModel", GROUP_X))
        for plural, kind, group in objective_refs:
            ref = ResourceRef(plural, opts.pool_namespace, group, OBJECTIVE_VERSION)
            handler = _ObjectiveHandler(self, kind, group)
            self._objective_handlers.append(handler)
            task = ReflectorTask(
                Reflector(self._api, ref, handler, watch_timeout_s=opts.watch_timeout_s,
                          on_missing=handler.missing, missing_retry_s=self._missing_crd_retry_s)
            )
            task.start()
            self._objective_tasks.append(task)
        rewrites = RewriteGroups(self.datastore.model_rewrites, opts.pool_name)
        for group in REWRITE_GROUPS:
            rw_handler = rewrites.handler(group)
            task = ReflectorTask(Reflector(
                self._api, ResourceRef(REWRITE_PLURAL, opts.pool_namespace, group, REWRITE_VERSION), rw_handler,
                watch_timeout_s=opts.watch_timeout_s, on_missing=rw_handler.missing,
                missing_retry_s=self._missing_crd_retry_s))
            task.start()
            self._rewrite_tasks.append(task)
        if opts.leader_elect:
            self.leader = LeaderElector(
                self._api,
                LeaseConfig(
                    namespace=opts.effective_lease_namespace,
                    name=opts.effective_lease_name,
                    identity=opts.effective_identity,
                    lease_duration_s=opts.lease_duration_s,
                    renew_deadline_s=opts.renew_deadline_s,
                    retry_period_s=opts.retry_period_s,
                ),
                *self._leader_callbacks,
            )
            self.leader.start()
        if self.config_watcher is not None:
            self.config_watcher.start()

    async def stop(self) -> None:
        if self.config_watcher is not None:
            await self.config_watcher.stop()
        if self.leader is not None:
            await self.leader.stop()
        for task in [self._pool_task, self._pod_task, *self._objective_tasks, *self._rewrite_tasks]:
            if task is not None:
                await task.stop()
        self._pool_task = self._pod_task = None
        self._objective_tasks = []
        self._rewrite_tasks = []
        if self._owns_api and self._api is not None:
            await self._api.close()
            self._api = None

    # --- status -------------------------------------------------------------------------
    def synced(self) -> bool:
        """Ready to serve: the pool is known and its pods and objectives have been listed."""
        return (
            self.datastore.pool_synced()
            and self._pod_task is not None
            and self._pod_task.reflector.synced()
            and all(t.reflector.synced() for t in self._objective_tasks)
            and all(t.reflector.synced() for t in self._rewrite_tasks)
        )

    def missing_crds(self) -> list[str]:
        """Objective collections the API server does not serve (CRD not installed)."""
        return [f"{t.reflector.ref.plural}.{t.reflector.ref.group}"
                for t in self._objective_tasks if t.reflector.missing]

    def _objective_crd_state(self, handler: _ObjectiveHandler, missing: bool) -> None:
        """A reflector found its collection missing (404) or served. Decides which group's
        InferenceObjectives count, and warns when none is installed: then every request runs
        at priority 0 and nothing is sheddable, which must not happen silently."""
        kind = handler._kind
        self._crd_missing[(kind, handler.group)] = missing
        if kind == "InferenceModel":
            if missing:
                log.warning("InferenceModel CRD is not installed: --watch-inference-models reads "
                            "nothing (InferenceModel is the legacy v1alpha2 API; drop the flag)")
            return
        states = [self._crd_missing.get((kind, g)) for g in OBJECTIVE_GROUPS]
        new_served = states[0] is False
        for h in self._objective_handlers:
            if h._kind == kind and h.group == GROUP_X:
                h.set_active(not new_served)
        if new_served and states[1] is False:
            log.warning("both the %s and the legacy %s InferenceObjective CRDs are installed: "
                        "the EPP reads %s only and ignores the legacy objects", GROUP_LLMD, GROUP_X, GROUP_LLMD)
        if all(s is True for s in states):
            if not self._warned_no_objectives:
                log.warning("InferenceObjective CRD is not installed (404 from the API server for %s): "
                            "objectives cannot be read, so request priorities are ignored (every "
                            "request has priority 0, none is sheddable). %s",
                            " and ".join(f"{g}/{OBJECTIVE_VERSION}" for g in OBJECTIVE_GROUPS),
                            OBJECTIVE_CRD_HINT)
                self._warned_no_objectives = True
        elif not missing:
            if self._warned_no_objectives:
                log.info("InferenceObjective CRD is served now (%s); reading objectives", handler.group)
            self._warned_no_objectives = False

    def is_leader(self) -> bool:
        return self.leader.is_leader() if self.leader is not None else not self.options.leader_elect

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, task in [("pool", self._pool_task), ("pods", self._pod_task)] + [
            (f"{t.reflector.ref.plural}.{t.reflector.ref.group}", t)
            for t in [*self._objective_tasks, *self._rewrite_tasks]
        ]:
            if task is not None:
                out[name] = task.reflector.stats
        return out

    # --- pool ---------------------------------------------------------------------------
    def _apply_pool(self, obj: JSON) -> None:
        try:
            pool = parse_inference_pool(obj)
        except ResourceError as e:
            log.error("ignoring invalid pool update, keeping the previous spec: %s", e)
            return
        old = self.datastore.pool
        self.datastore.set_pool(pool)
        if old is None or old.selector != pool.selector or self._pod_task is None:
            self._restart_pod_watch(pool)
        elif old.target_ports != pool.target_ports:
            for pod in list(self._pods.values()):
                self._sync_pod(pod)

    def _clear_pool(self, why: str) -> None:
        if self.datastore.pool is None and self._pod_task is None:
            return
        log.warning("InferencePool %s/%s %s; dropping all endpoints",
                    self.options.pool_namespace, self.options.pool_name, why)
        self._stop_pod_watch()
        self.datastore.pool = None
        for name in list(self._pods):
            self._forget_pod(name)

    def _restart_pod_watch(self, pool: PoolSpec) -> None:
        self._stop_pod_watch()
        self._pod_selector = dict(pool.selector)
        ref = ResourceRef("pods", self.options.pool_namespace)
        assert self._api is not None
        self._pod_task = ReflectorTask(
            Reflector(self._api, ref, _PodHandler(self),
                      label_selector=label_selector_string(pool.selector),
                      watch_timeout_s=self.options.watch_timeout_s)
        )
        self._pod_task.start()
        # Pods that no longer match are removed by the new watch's first LIST (replace),
        # and meanwhile by the client-side check in _sync_pod.
        for pod in list(self._pods.values()):
            self._sync_pod(pod)

    def _stop_pod_watch(self) -> None:
        if self._pod_task is not None:
            # Runs inside the pool reflector's callback, so cancel without awaiting.
            self._pod_task.cancel()
            self._pod_task = None

    # --- pods ---------------------------------------------------------------------------
    def _sync_pod(self, pod: PodState) -> None:
        self._pods[pod.name] = pod
        pool = self.datastore.pool
        wanted = (
            pod_endpoints(pod, pool)
            if pool is not None and pod.routable and pool.selects(pod.labels)
            else []
        )
        wanted_keys = [ep.key for ep in wanted]
        for key in self._pod_keys.get(pod.name, []):
            if key not in wanted_keys:
                self.datastore.remove_endpoint(key)
        for ep in wanted:
            self.datastore.upsert_endpoint(ep)
        if wanted_keys:
            self._pod_keys[pod.name] = wanted_keys
        else:
            self._pod_keys.pop(pod.name, None)

    def _forget_pod(self, name: str) -> None:
        self._pods.pop(name, None)
        for key in self._pod_keys.pop(name, []):
            self.datastore.remove_endpoint(key)
