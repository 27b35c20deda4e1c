"""Per-endpoint metrics scrapers and the manager that follows the datastore.

One asyncio task per endpoint GETs the pod's /metrics every `interval` over a shared
keep-alive HTTP client (aiohttp by default, httpx selectable; see http_client.py), maps
the page to EndpointMetrics and swaps the endpoint's `metrics` object in one assignment
(readers never see half an update). An endpoint whose last good scrape is older than
`staleness_threshold`, or that failed `max_consecutive_failures` scrapes in a row, is
marked unhealthy in the datastore (so the scheduler stops picking it) and marked healthy
again on the next good scrape.

Adaptive interval: scraping 64 idle pods every 50 ms cost about a third of a core for
numbers that do not change. A pod that is idle (no request in flight from this EPP or its
peer workers, nothing running or waiting on the last page) and whose signals did not change
since the last scrape is scraped half as often after each such scrape, up to
`idle_interval`; any change, failure or request in flight brings it back to `interval`.
The manager's watcher wakes a backed-off scraper as soon as a request is sent to its pod,
so a busy pod never waits for the idle interval. The idle interval is capped so that one
slow scrape cannot make an idle pod's metrics stale (idle_interval + timeout <=
staleness_threshold).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.metricsscrape.http_client import HttpGetter, ScrapeHttpError, Transport, make_getter
from epp.metricsscrape.mapping import ENGINE_MAPPINGS, VLLM, MetricMapping, extract_metrics
from epp.metricsscrape.parser import MetricsParseError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ScrapeConfig:
    """Scraping settings for one pool. Durations are seconds."""

    interval: float = 0.05
    # Longest interval for an idle pod whose metrics do not change (see the module doc);
    # equal to `interval` turns the adaptive interval off.
    idle_interval: float = 0.5
    timeout: float = 0.5
    staleness_threshold: float = 1.0
    max_consecutive_failures: int = 3
    metrics_path: str = "/metrics"
    scheme: str = "http"
    mapping: MetricMapping = VLLM
    # Pod label whose value names the engine ("vllm", "sglang") for that pod only; empty = off.
    engine_label: str = ""
    discover_models: bool = False
    models_interval: float = 5.0
    models_path: str = "/v1/models"
    max_connections: int = 256
    transport: Transport = "aiohttp"
    extra_mappings: Mapping[str, MetricMapping] = field(default_factory=lambda: dict(ENGINE_MAPPINGS))

    def validate(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {self.interval}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.staleness_threshold < self.interval:
            raise ValueError(
                f"stalenessThreshold ({self.staleness_threshold}s) must be >= interval ({self.interval}s)"
            )
        if self.max_consecutive_failures < 1:
            raise ValueError(f"maxConsecutiveFailures must be >= 1, got {self.max_consecutive_failures}")
        if self.transport not in ("aiohttp", "httpx"):
            raise ValueError(f"transport must be aiohttp or httpx, got {self.transport!r}")
        if self.models_interval <= 0:
            raise ValueError(f"modelsInterval must be > 0 seconds, got {self.models_interval}")
        if self.idle_interval <= 0:
            raise ValueError(f"idleInterval must be > 0 seconds, got {self.idle_interval}")

    @property
    def effective_idle_interval(self) -> float:
        """idle_interval, capped so that a slow scrape of an idle pod cannot go stale, and
        never below interval."""
        return max(self.interval, min(self.idle_interval, self.staleness_threshold - self.timeout))

    def mapping_for(self, ep: Endpoint) -> MetricMapping:
        if self.engine_label:
            engine = ep.labels.get(self.engine_label)
            if engine:
                found = self.extra_mappings.get(engine)
                if found is not None:
                    return found
                log.warning("endpoint %s: unknown engine %r in label %s; using %s",
                            ep.key, engine, self.engine_label, self.mapping.engine)
        return self.mapping


class EndpointScraper:
    """Scrapes one endpoint until cancelled; owns its failure count."""

    def __init__(self, endpoint: Endpoint, datastore: Datastore, client: HttpGetter,
                 config: ScrapeConfig) -> None:
        self.endpoint = endpoint
        self._datastore = datastore
        self._client = client
        self._config = config
        self._mapping = config.mapping_for(endpoint)
        self._url = f"{config.scheme}://{endpoint.hostport}{config.metrics_path}"
        self.consecutive_failures = 0
        self.scrapes = 0
        self._started_at = time.monotonic()
        self.current_interval = config.interval
        self._idle_cap = config.effective_idle_interval
        self._signature: tuple[object, ...] | None = None
        self._wake = asyncio.Event()

    def busy(self) -> bool:
        """Requests in flight to the pod (ours or a peer worker's) or on its last page."""
        ep = self.endpoint
        m = ep.metrics
        return bool(ep.inflight or ep.peer_inflight or m.waiting_queue_size or m.running_requests)

    @property
    def backed_off(self) -> bool:
        return self.current_interval > self._config.interval

    def wake(self) -> None:
        """Scrape now and return to the base interval (a request was sent to an idle pod)."""
        self.current_interval = self._config.interval
        self._wake.set()

    def _next_interval(self, ok: bool) -> float:
        base = self._config.interval
        if not ok or self._idle_cap <= base:
            self._signature = None
            return base
        m = self.endpoint.metrics
        signature = (m.waiting_queue_size, m.running_requests, m.kv_cache_usage, m.active_loras, m.waiting_loras)
        unchanged = signature == self._signature
        self._signature = signature
        if unchanged and not self.busy():
            return min(self._idle_cap, self.current_interval * 2)
        return base

    async def run(self) -> None:
        self._started_at = time.monotonic()
        next_at = self._started_at
        while True:
            ok = False
            try:
                ok = await self.scrape_once()
            except Exception as e:
                # A bug must not silently end scraping of this endpoint (it would then
                # look healthy forever with frozen metrics): count it as a failed scrape.
                log.exception("endpoint %s: unexpected scrape error", self.endpoint.key)
                self._on_failure(e)
            self.current_interval = self._next_interval(ok)
            # Fixed-rate schedule; if a scrape overran, start the next one right away
            # instead of bunching up missed ticks.
            next_at += self.current_interval
            now = time.monotonic()
            if next_at < now:
                next_at = now
            if not self.backed_off:
                await asyncio.sleep(next_at - now)
                continue
            self._wake.clear()
            try:
                async with asyncio.timeout(next_at - now):
                    await self._wake.wait()
            except TimeoutError:
                continue
            next_at = time.monotonic()  # woken: scrape right away

    async def scrape_once(self) -> bool:
        """One scrape; updates metrics and health. Returns whether it succeeded."""
        ep = self.endpoint
        self.scrapes += 1
        try:
            async with asyncio.timeout(self._config.timeout):
                status, text = await self._client.get_text(self._url)
            if status != 200:
                raise _ScrapeFailed(f"HTTP {status}")
            ep.metrics = extract_metrics(text, self._mapping, time.monotonic(), ep.metrics)
        except (ScrapeHttpError, TimeoutError, OSError, MetricsParseError, _ScrapeFailed) as e:
            self._on_failure(e)
            return False
        if self.consecutive_failures or not ep.healthy:
            log.info("endpoint %s: metrics scrape recovered after %d failures",
                     ep.key, self.consecutive_failures)
        self.consecutive_failures = 0
        if not ep.healthy and self._datastore.get(ep.key) is ep:
            self._datastore.set_health(ep, True)
        return True

    def _on_failure(self, error: BaseException) -> None:
        ep = self.endpoint
        self.consecutive_failures += 1
        now = time.monotonic()
        last_good = max(ep.metrics.updated_at, self._started_at)
        stale = now - last_good > self._config.staleness_threshold
        too_many = self.consecutive_failures >= self._config.max_consecutive_failures
        if ep.healthy and (stale or too_many):
            reason = "stale metrics" if stale else f"{self.consecutive_failures} failed scrapes"
            log.warning("endpoint %s: marked unhealthy (%s): %s: %s",
                        ep.key, reason, type(error).__name__, error or "timeout")
            if self._datastore.get(ep.key) is ep:
                self._datastore.set_health(ep, False)
        elif self.consecutive_failures == 1:
            log.debug("endpoint %s: scrape failed: %s: %s", ep.key, type(error).__name__, error)


class _ScrapeFailed(Exception):
    pass


class ScraperManager:
    """Starts and stops one EndpointScraper per datastore endpoint.

    Lifecycle: `await start()` subscribes to the datastore and scrapes every endpoint
    already known; `await stop()` cancels all tasks and closes the HTTP client.
    """

    def __init__(self, datastore: Datastore, config: ScrapeConfig | None = None,
                 client: HttpGetter | None = None) -> None:
        self.datastore = datastore
        self.config = config or ScrapeConfig()
        self.config.validate()
        self._own_client = client is None
        self._client = client
        self._tasks: dict[Endpoint, asyncio.Task[None]] = {}
        self.scrapers: dict[Endpoint, EndpointScraper] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._models_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._subscribed = False

    async def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self._client is None:
            # The per-request bound is asyncio.timeout in the scraper; the client's own
            # timeout only backs it up (the /v1/models fetch may take up to 1 s).
            self._client = make_getter(self.config.transport, max(self.config.timeout, 1.0),
                                       self.config.max_connections)
        if not self._subscribed:
            self.datastore.add_listener(self._on_endpoint_event)
            self._subscribed = True
        for ep in self.datastore.endpoints():
            self._start_scraper(ep)
        if self.config.discover_models:
            self._models_task = asyncio.create_task(self._models_loop(), name="served-models-discovery")
        if self.config.effective_idle_interval > self.config.interval:
            self._watch_task = asyncio.create_task(self._watch_loop(), name="scrape-idle-watch")

    async def stop(self) -> None:
        if self._subscribed:
            self.datastore.remove_listener(self._on_endpoint_event)
            self._subscribed = False
        tasks = list(self._tasks.values())
        if self._models_task is not None:
            tasks.append(self._models_task)
            self._models_task = None
        if self._watch_task is not None:
            tasks.append(self._watch_task)
            self._watch_task = None
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        self.scrapers.clear()
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None
        self._loop = None

    def _on_endpoint_event(self, event: str, ep: Endpoint) -> None:
        if self._loop is None:
            return
        if event == "added":
            self._call_in_loop(self._start_scraper, ep)
        elif event == "removed":
            self._call_in_loop(self._stop_scraper, ep)

    def _call_in_loop(self, fn: Any, ep: Endpoint) -> None:
        assert self._loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            fn(ep)
        else:
            self._loop.call_soon_threadsafe(fn, ep)

    def _start_scraper(self, ep: Endpoint) -> None:
        if ep in self._tasks or self._client is None:
            return
        scraper = EndpointScraper(ep, self.datastore, self._client, self.config)
        self.scrapers[ep] = scraper
        self._tasks[ep] = asyncio.create_task(scraper.run(), name=f"scrape {ep.key}")
        log.debug("endpoint %s: scraping %s every %.3fs", ep.key, ep.hostport, self.config.interval)

    def _stop_scraper(self, ep: Endpoint) -> None:
        task = self._tasks.pop(ep, None)
        self.scrapers.pop(ep, None)
        if task is not None:
            task.cancel()

    async def _watch_loop(self) -> None:
        """Every base interval: wake the backed-off scrapers whose pod got a request. One
        task scanning a few attributes per pod is far cheaper than every idle scraper
        waking up to check for itself."""
        interval = self.config.interval
        while True:
            await asyncio.sleep(interval)
            for scraper in self.scrapers.values():
                if scraper.backed_off and (scraper.endpoint.inflight or scraper.endpoint.peer_inflight):
                    scraper.wake()

    # --- served models ------------------------------------------------------------------
    async def _models_loop(self) -> None:
        while True:
            await self.refresh_served_models()
            await asyncio.sleep(self.config.models_interval)

    async def refresh_served_models(self) -> set[str] | None:
        """Union of /v1/models ids (base models and LoRA adapters) of the healthy endpoints.
        Leaves Datastore.served_models unchanged when no endpoint answered."""
        endpoints = self.datastore.healthy_endpoints()
        if not endpoints or self._client is None:
            return None
        results = await asyncio.gather(*(self._fetch_models(ep) for ep in endpoints))
        answered = [r for r in results if r is not None]
        if not answered:
            return None
        models: set[str] = set().union(*answered)
        served = self.datastore.served_models
        if served != models:
            log.info("served models: %s", ", ".join(sorted(models)))
            # In place: holders of the set object keep seeing the current names.
            served.clear()
            served.update(models)
        return models

    async def _fetch_models(self, ep: Endpoint) -> set[str] | None:
        assert self._client is not None
        url = f"{self.config.scheme}://{ep.hostport}{self.config.models_path}"
        try:
            async with asyncio.timeout(max(self.config.timeout, 1.0)):
                status, body = await self._client.get_json(url)
            if status != 200:
                return None
        except (ScrapeHttpError, TimeoutError, OSError, ValueError) as e:
            log.debug("endpoint %s: %s failed: %s", ep.key, url, e)
            return None
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            return None
        return {m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)}
