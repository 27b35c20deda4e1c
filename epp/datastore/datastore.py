"""The datastore: the InferencePool, its endpoints and objectives.

Fed either from local files (local mode) or from the Kubernetes API (epp.k8s). Readers on
the hot path use `endpoints()` which returns a cached tuple that is rebuilt only when the
endpoint set changes, so scheduling never copies the pool per request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from epp.datastore.endpoint import Endpoint
from epp.rollout.store import RewriteStore


@dataclass(slots=True)
class PoolSpec:
    """InferencePool spec (inference.networking.k8s.io/v1)."""

    name: str
    namespace: str = "default"
    selector: dict[str, str] = field(default_factory=dict)
    target_ports: tuple[int, ...] = (8000,)
    endpoint_picker_name: str = ""
    endpoint_picker_port: int = 9002
    failure_mode: str = "FailClose"  # FailOpen | FailClose

    def selects(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.selector.items())


@dataclass(slots=True)
class InferenceObjective:
    """InferenceObjective (v1alpha2) or, for older clusters, InferenceModel.

    `priority`: higher is more important; negative priorities are sheddable under overload.
    InferenceModel's criticality maps Critical -> 1, Standard/Normal -> 0, Sheddable -> -1.
    `target_models`: optional rewrite of the requested model name (weighted).
    """

    name: str
    model_name: str
    priority: int = 0
    pool_name: str = ""
    target_models: tuple[tuple[str, int], ...] = ()


EndpointListener = Callable[[str, Endpoint], None]  # (event: "added"|"removed"|"updated", endpoint)


class Datastore:
    def __init__(self, pool: PoolSpec | None = None) -> None:
        self.pool: PoolSpec | None = pool
        self._endpoints: dict[str, Endpoint] = {}
        self._snapshot: tuple[Endpoint, ...] = ()
        self._healthy_snapshot: tuple[Endpoint, ...] = ()
        self._by_hostport: dict[str, Endpoint] = {}
        self._objectives: dict[str, InferenceObjective] = {}
        self._listeners: list[EndpointListener] = []
        # Models served by the pool (base models and LoRA adapters), when known. Empty means
        # "accept any model name"; filled from /v1/models of the pods or from config.
        self.served_models: set[str] = set()
        # InferenceModelRewrites of the pool (epp/rollout), written by the endpoint sources.
        self.model_rewrites = RewriteStore()

    # --- pool ---------------------------------------------------------------------------
    def set_pool(self, pool: PoolSpec) -> None:
        self.pool = pool

    def pool_synced(self) -> bool:
        return self.pool is not None

    # --- endpoints ----------------------------------------------------------------------
    def add_listener(self, listener: EndpointListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: EndpointListener) -> None:
        """Unsubscribe a listener added with add_listener (no-op if absent)."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def upsert_endpoint(self, ep: Endpoint) -> Endpoint:
        """Add or update an endpoint by key. An existing object keeps its metrics and counters."""
        old = self._endpoints.get(ep.key)
        if old is not None and old.address == ep.address and old.port == ep.port:
            old.labels = ep.labels
            old.role = ep.role
            self._notify("updated", old)
            return old
        if old is not None:
            self._endpoints.pop(old.key)
            self._notify("removed", old)
        self._endpoints[ep.key] = ep
        self._rebuild()
        self._notify("added", ep)
        return ep

    def remove_endpoint(self, key: str) -> None:
        ep = self._endpoints.pop(key, None)
        if ep is not None:
            self._rebuild()
            self._notify("removed", ep)

    def set_health(self, ep: Endpoint, healthy: bool) -> None:
        if ep.healthy != healthy:
            ep.healthy = healthy
            self._rebuild()
            self._notify("updated", ep)

    def endpoints(self) -> tuple[Endpoint, ...]:
        """All endpoints, healthy or not (cached tuple)."""
        return self._snapshot

    def healthy_endpoints(self) -> tuple[Endpoint, ...]:
        """Endpoints that are ready and whose metrics are fresh (cached tuple)."""
        return self._healthy_snapshot

    def get(self, key: str) -> Endpoint | None:
        return self._endpoints.get(key)

    def by_hostport(self, hostport: str) -> Endpoint | None:
        return self._by_hostport.get(hostport)

    def _rebuild(self) -> None:
        self._snapshot = tuple(self._endpoints.values())
        self._healthy_snapshot = tuple(e for e in self._snapshot if e.healthy)
        self._by_hostport = {e.hostport: e for e in self._snapshot}

    def _notify(self, event: str, ep: Endpoint) -> None:
        for listener in self._listeners:
            listener(event, ep)

    # --- objectives ---------------------------------------------------------------------
    def upsert_objective(self, obj: InferenceObjective) -> None:
        self._objectives[obj.model_name] = obj

    def remove_objective(self, model_name: str) -> None:
        self._objectives.pop(model_name, None)

    def objective(self, model_name: str) -> InferenceObjective | None:
        return self._objectives.get(model_name)

    def objectives(self) -> list[InferenceObjective]:
        return list(self._objectives.values())

