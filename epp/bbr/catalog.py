"""Which pool serves which model, and the aggregated `/v1/models` answer.

Each pool's model list comes from its pods' own `GET /v1/models` (base models and LoRA
adapters, with the pods' `owned_by`: "vllm", "sglang", ...) or from a static list. A model
served by several pools is listed once, under the first pool in config order (the route
table sends it there too: Envoy takes the first matching rule).

A refresh in which no pod of a pool answers keeps that pool's last known list, so a pool
restarting does not turn its models into 404s for a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx

from epp.bbr.config import BbrConfig, PoolModels
from epp.datastore.local import LocalSourceError, load_endpoints_file

log = logging.getLogger("epp.bbr")


@dataclass(frozen=True, slots=True)
class ModelEntry:
    pool: str
    card: dict[str, Any]  # the pod's model card (id, object, created, owned_by, root, parent, ...)


class ModelCatalog:
    def __init__(self, config: BbrConfig) -> None:
        self.config = config
        self._cards: dict[str, list[dict[str, Any]]] = {}  # pool -> cards, once known
        self._index: dict[str, ModelEntry] = {}
        self._listing = b""
        for pool in config.pools:
            if pool.models:
                self._cards[pool.name] = [{"id": m.id, "object": "model", "created": int(time.time()),
                                           "owned_by": m.owned_by} for m in pool.models]
        self._rebuild()

    # --- lookups (hot path: dict get) ----------------------------------------------------
    def pool_of(self, model: str) -> str | None:
        entry = self._index.get(model)
        return None if entry is None else entry.pool

    def card(self, model: str) -> dict[str, Any] | None:
        entry = self._index.get(model)
        return None if entry is None else entry.card

    def complete(self) -> bool:
        """Every pool's models are known (only then is an unknown model a sure 404)."""
        return all(p.name in self._cards for p in self.config.pools)

    def missing_pools(self) -> list[str]:
        return [p.name for p in self.config.pools if p.name not in self._cards]

    def listing(self) -> bytes:
        """The OpenAI list object of every model, each once (pre-encoded)."""
        return self._listing

    def models(self) -> dict[str, str]:
        return {model: entry.pool for model, entry in self._index.items()}

    # --- refresh -------------------------------------------------------------------------
    async def refresh(self, client: httpx.AsyncClient) -> None:
        pools = [p for p in self.config.pools if p.endpoints_file is not None]
        results = await asyncio.gather(*(self._fetch_pool(client, p) for p in pools))
        changed = False
        for pool, cards in zip(pools, results, strict=True):
            if cards is not None and cards != self._cards.get(pool.name):
                self._cards[pool.name] = cards
                changed = True
        if changed:
            self._rebuild()

    async def run(self, client: httpx.AsyncClient) -> None:
        while True:
            try:
                await self.refresh(client)
            except Exception:  # never let discovery die: the next round retries
                log.exception("model discovery failed")
            # Poll faster until every pool is known, so a starting gateway is ready soon.
            await asyncio.sleep(self.config.refresh_s if self.complete() else min(0.2, self.config.refresh_s))

    async def _fetch_pool(self, client: httpx.AsyncClient, pool: PoolModels) -> list[dict[str, Any]] | None:
        assert pool.endpoints_file is not None
        try:
            pods = [p for p in load_endpoints_file(pool.endpoints_file) if p.ready and p.port is not None]
        except (LocalSourceError, OSError) as e:
            log.warning("pool %s: cannot read %s: %s", pool.name, pool.endpoints_file, e)
            return None
        answers = await asyncio.gather(*(self._fetch_pod(client, f"http://{p.ip}:{p.port}/v1/models")
                                         for p in pods))
        cards: dict[str, dict[str, Any]] = {}
        answered = False
        for data in answers:
            if data is None:
                continue
            answered = True
            for card in data:
                cards.setdefault(card["id"], card)
        return sorted(cards.values(), key=lambda c: str(c["id"])) if answered else None

    async def _fetch_pod(self, client: httpx.AsyncClient, url: str) -> list[dict[str, Any]] | None:
        try:
            resp = await client.get(url, timeout=self.config.fetch_timeout_s)
            if resp.status_code != 200:
                return None
            data = resp.json().get("data")
        except (httpx.HTTPError, ValueError, AttributeError) as e:
            log.debug("%s: %s", url, e)
            return None
        if not isinstance(data, list):
            return None
        return [c for c in data if isinstance(c, dict) and isinstance(c.get("id"), str) and c["id"]]

    def _rebuild(self) -> None:
        index: dict[str, ModelEntry] = {}
        for pool in self.config.pools:
            for card in self._cards.get(pool.name, ()):
                first = index.get(card["id"])
                if first is not None:
                    if first.pool != pool.name:
                        log.warning("model %s is served by pools %s and %s; routing it to %s",
                                    card["id"], first.pool, pool.name, first.pool)
                    continue
                index[card["id"]] = ModelEntry(pool.name, card)
        self._index = index
        self._listing = json.dumps({"object": "list", "data": [e.card for e in index.values()]}).encode()
        log.info("models: %s", ", ".join(f"{m} -> {e.pool}" for m, e in index.items()) or "none yet")
