"""The body-based router's Prometheus metrics (`GET /metrics` on its health port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from epp.bbr.catalog import ModelCatalog

OUTCOMES = ("routed", "models_list", "passthrough", "missing_model", "invalid_request", "unknown_model",
            "not_ready", "internal_error")


class BbrMetrics:
    def __init__(self, catalog: ModelCatalog) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        requests = Counter("bbr_requests", "Requests seen by the body-based router, by outcome.", ["outcome"],
                           registry=self.registry)
        # Children bound once: counting is one dict lookup and an increment.
        self._by_outcome = {o: requests.labels(o) for o in OUTCOMES}
        self._models = Gauge("bbr_models", "Models known per pool.", ["pool"], registry=self.registry)
        self._catalog = catalog

    def count(self, outcome: str) -> None:
        self._by_outcome[outcome].inc()

    def render(self) -> bytes:
        per_pool: dict[str, int] = {p.name: 0 for p in self._catalog.config.pools}
        for pool in self._catalog.models().values():
            per_pool[pool] += 1
        for pool, n in per_pool.items():
            self._models.labels(pool).set(n)
        return generate_latest(self.registry)
