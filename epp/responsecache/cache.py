"""The exact-response cache as the ext_proc handler sees it.

Per request (epp/server/extproc.py):
1. request headers: `wants_response_headers` says whether to ask Envoy, through a per-request
   `mode_override`, for this request's response headers (only inference calls that could be
   cached; everything else keeps the configured processing mode and pays nothing).
2. request body: `plan` decides cacheability and computes the key; `lookup` reads the store.
   A hit becomes an ImmediateResponse (`hit_response`) and no pod sees the request.
3. response headers of a miss: `start_fill` on a 200, and the handler answers with a second
   mode override that turns on response-body processing (STREAMED for SSE, BUFFERED for JSON).
4. response body chunks feed the ResponseAssembler; the last one (`end_of_stream`) hands the
   entry to `finish_fill`, which stores it in the background. A stream that ends without it is
   `abandon_fill`ed and never stored.

Every store failure is a miss plus a counted error: the request goes to the pods as if there
were no cache.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from epp.headers import OBJECTIVE
from epp.observability.metrics import OVERFLOW_LABEL
from epp.responsecache.config import ResponseCacheConfig
from epp.responsecache.fill import INCOMPLETE, NOT_200, ResponseAssembler
from epp.responsecache.metrics import CacheMetrics
from epp.responsecache.policy import CachePlan, parse_cache_control, plan_request
from epp.responsecache.store import CacheStore, MemoryStore, RedisStore, StoreError, StoreUnavailable
from epp.server import wire

log = logging.getLogger("epp.responsecache")

CACHE_HEADER = "x-epp-cache"
STORE_UNAVAILABLE = "store_unavailable"
MAX_MODEL_SERIES = 256  # as EPPMetrics: more model names fold into OVERFLOW_LABEL
_INFERENCE_PATHS = ("/v1/completions", "/v1/chat/completions")
# The answer to a cacheable miss's response headers: it tells the client the pods answered.
MISS_RESPONSE_HEADERS = wire.response_headers_response(wire.common_response(
    wire.header_mutation(((CACHE_HEADER, "miss"),))))
# Encoded once: a hit only adds its request id.
_JSON_HEADERS = wire.header_mutation((("content-type", "application/json"), (CACHE_HEADER, "hit")))
_SSE_HEADERS = wire.header_mutation((("content-type", "text/event-stream"), ("cache-control", "no-cache"),
                                     (CACHE_HEADER, "hit")))


def build_store(cfg: ResponseCacheConfig) -> CacheStore:
    s = cfg.storage
    if s.redis:
        return RedisStore(s.redis, s.key_prefix, s.timeout_ms / 1000, s.retry_after_ms / 1000)
    return MemoryStore(s.memory_max_bytes)


class ResponseCache:
    def __init__(self, cfg: ResponseCacheConfig, store: CacheStore | None = None,
                 metrics: CacheMetrics | None = None) -> None:
        self.cfg = cfg
        self.store = store if store is not None else build_store(cfg)
        self.metrics = metrics if metrics is not None else CacheMetrics(None)
        self._tasks: set[asyncio.Task[None]] = set()
        self._skip: dict[str, Any] = {}  # reason -> counter child, created once
        self._series: dict[str, tuple[Any, Any, Any]] = {}

    # --- request side -------------------------------------------------------------------
    def wants_response_headers(self, method: str, path: str, headers: dict[str, str]) -> bool:
        """Header time: the body (model, temperature) is not known yet, so every inference call
        a rule could still match asks for its response headers (one message, no body); calls
        with `no-store`, and calls whose objective header no objective-only rule names, do not."""
        if method != "POST" or not path.startswith(_INFERENCE_PATHS):
            return False
        if parse_cache_control(headers.get("cache-control", "")).no_store:
            return False
        objective = headers.get(OBJECTIVE, "")
        return any(not rule.objective or rule.objective == objective for rule in self.cfg.rules)

    def plan(self, model: str, target_model: str, path: str, body: bytes,
             headers: dict[str, str]) -> CachePlan | None:
        out = plan_request(self.cfg, model, target_model, path, body, headers)
        if isinstance(out, str):
            self.skipped(out)
            return None
        return out

    async def lookup(self, plan: CachePlan) -> bytes | None:
        """The stored answer, or None (a miss, also when the store failed)."""
        try:
            value = await self.store.get(plan.key)
        except StoreUnavailable:
            self.skipped(STORE_UNAVAILABLE)
            return None
        except StoreError as e:
            self.metrics.redis_errors.labels("get").inc()
            log.warning("response cache lookup failed, asking the pods: %s", e)
            return None
        hits, misses, _ = self._model_series(plan.model)
        if value is None:
            misses.inc()
            return None
        hits.inc()
        self.metrics.served.inc(len(value))
        return value

    @staticmethod
    def hit_response(plan: CachePlan, value: bytes, request_id: str) -> bytes:
        return wire.immediate_response(200, value, (("x-request-id", request_id),) if request_id else (),
                                       details="epp_response_cache_hit",
                                       mutation=_SSE_HEADERS if plan.stream else _JSON_HEADERS)

    # --- response side ------------------------------------------------------------------
    def start_fill(self, plan: CachePlan, status: int) -> ResponseAssembler | None:
        if status != 200:
            self.skipped(NOT_200)
            return None
        return ResponseAssembler(plan.stream, plan.max_entry_bytes)

    def finish_fill(self, plan: CachePlan, assembler: ResponseAssembler) -> None:
        entry = assembler.entry()
        if isinstance(entry, str):
            self.skipped(entry)
            return
        task = asyncio.get_running_loop().create_task(self._store(plan, entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def abandon_fill(self) -> None:
        self.skipped(INCOMPLETE)

    async def _store(self, plan: CachePlan, entry: bytes) -> None:
        try:
            await self.store.set(plan.key, entry, plan.ttl_s)
        except StoreUnavailable:
            self.skipped(STORE_UNAVAILABLE)
            return
        except StoreError as e:
            self.metrics.redis_errors.labels("set").inc()
            log.warning("response cache store failed (the answer was delivered, not cached): %s", e)
            return
        self._model_series(plan.model)[2].inc()
        self.metrics.stored.inc(len(entry))

    # --- bookkeeping ----------------------------------------------------------------------
    def skipped(self, reason: str) -> None:
        child = self._skip.get(reason)
        if child is None:
            child = self._skip[reason] = self.metrics.skipped.labels(reason)
        child.inc()

    def _model_series(self, model: str) -> tuple[Any, Any, Any]:
        s = self._series.get(model)
        if s is None:
            if len(self._series) >= MAX_MODEL_SERIES:  # client-chosen names must not grow memory
                model = OVERFLOW_LABEL
                s = self._series.get(model)
                if s is not None:
                    return s
            m = self.metrics
            s = self._series[model] = (m.hits.labels(model), m.misses.labels(model), m.fills.labels(model))
        return s

    async def drain(self) -> None:
        """Wait for the stores in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        await self.store.close()
