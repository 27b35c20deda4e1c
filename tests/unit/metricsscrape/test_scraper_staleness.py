"""Scraper against real aiohttp model-server stand-ins on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.metricsscrape.http_client import Transport
from epp.metricsscrape.mapping import SGLANG
from epp.metricsscrape.scraper import ScrapeConfig, ScraperManager
from tests.unit.metricsscrape.fake_pods import FakePod, start_pod
from tests.unit.metricsscrape.vllm_pages import sglang_page


@pytest.fixture
async def pods() -> AsyncIterator[list[FakePod]]:
    started = [await start_pod(), await start_pod()]
    yield started
    for p in started:
        assert p.runner is not None
        p.released.set()
        await p.runner.cleanup()


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


FAST = ScrapeConfig(interval=0.02, timeout=0.1, staleness_threshold=0.3, max_consecutive_failures=3)


async def test_scrapes_fill_metrics_and_follow_datastore(pods: list[FakePod]) -> None:
    ds = Datastore()
    a = ds.upsert_endpoint(Endpoint("pod-a", "127.0.0.1", pods[0].port))
    manager = ScraperManager(ds, FAST)
    await manager.start()
    try:
        pods[0].waiting = 6
        await wait_for(lambda: a.metrics.waiting_queue_size == 6)
        assert a.metrics.kv_cache_usage == 0.42 and a.metrics.updated_at > 0
        # an endpoint added later gets its own scraper; a removed one stops being scraped
        b = ds.upsert_endpoint(Endpoint("pod-b", "127.0.0.1", pods[1].port))
        await wait_for(lambda: b.metrics.updated_at > 0)
        ds.remove_endpoint(a.key)
        await asyncio.sleep(0.2)  # let a request already in flight land
        hits = pods[0].hits
        await asyncio.sleep(0.15)
        assert pods[0].hits == hits
        assert a not in manager.scrapers and b in manager.scrapers
    finally:
        await manager.stop()
    assert not manager.scrapers


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_failures_mark_unhealthy_then_recover(pods: list[FakePod], transport: Transport) -> None:
    ds = Datastore()
    ep = ds.upsert_endpoint(Endpoint("pod-a", "127.0.0.1", pods[0].port))
    manager = ScraperManager(ds, replace(FAST, transport=transport))
    await manager.start()
    try:
        await wait_for(lambda: ep.metrics.updated_at > 0)
        assert ds.healthy_endpoints() == (ep,)
        pods[0].mode = "error"
        await wait_for(lambda: not ep.healthy)
        assert ds.healthy_endpoints() == ()
        assert ds.endpoints() == (ep,)  # still known, just not schedulable
        assert manager.scrapers[ep].consecutive_failures >= 1
        pods[0].mode = "ok"
        await wait_for(lambda: ep.healthy)
        assert ds.healthy_endpoints() == (ep,)
    finally:
        await manager.stop()


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_hanging_pod_goes_stale_via_timeout(pods: list[FakePod], transport: Transport) -> None:
    ds = Datastore()
    ep = ds.upsert_endpoint(Endpoint("pod-a", "127.0.0.1", pods[0].port))
    config = ScrapeConfig(interval=0.02, timeout=0.1, staleness_threshold=0.25, max_consecutive_failures=100,
                          transport=transport)
    manager = ScraperManager(ds, config)
    await manager.start()
    try:
        await wait_for(lambda: ep.metrics.updated_at > 0)
        pods[0].mode = "hang"
        await wait_for(lambda: not ep.healthy)  # staleness, not the failure count, tripped
        assert manager.scrapers[ep].consecutive_failures < 100
    finally:
        await manager.stop()


async def test_unreachable_endpoint_never_scraped_goes_unhealthy() -> None:
    from tests.helpers.procs import free_port

    ds = Datastore()
    ep = ds.upsert_endpoint(Endpoint("gone", "127.0.0.1", free_port()))
    manager = ScraperManager(ds, FAST)
    await manager.start()
    try:
        await wait_for(lambda: not ep.healthy)
    finally:
        await manager.stop()


async def test_sglang_mapping_and_served_models(pods: list[FakePod]) -> None:
    pods[0].page = lambda waiting: sglang_page(queue=waiting)
    pods[0].waiting = 9
    pods[1].models = ("base-model", "chat-lora")
    ds = Datastore()
    a = ds.upsert_endpoint(Endpoint("pod-a", "127.0.0.1", pods[0].port, labels={"engine": "sglang"}))
    ds.upsert_endpoint(Endpoint("pod-b", "127.0.0.1", pods[1].port))
    config = ScrapeConfig(interval=0.02, timeout=0.2, engine_label="engine", discover_models=True,
                          models_interval=0.05)
    manager = ScraperManager(ds, config)
    await manager.start()
    try:
        await wait_for(lambda: a.metrics.waiting_queue_size == 9)
        assert a.metrics.kv_cache_usage == 0.52
        assert manager.scrapers[a]._mapping is SGLANG
        await wait_for(lambda: ds.served_models == {"base-model", "sql-lora", "chat-lora"})
    finally:
        await manager.stop()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="stalenessThreshold"):
        ScrapeConfig(interval=1.0, staleness_threshold=0.5).validate()
    with pytest.raises(ValueError, match="interval"):
        ScrapeConfig(interval=0).validate()
    with pytest.raises(ValueError, match="maxConsecutiveFailures"):
        ScrapeConfig(max_consecutive_failures=0).validate()
    with pytest.raises(ValueError, match="transport must be aiohttp or httpx"):
        ScrapeConfig(transport="curl").validate()  # type: ignore[arg-type]


async def test_unexpected_error_counts_as_failure_and_scraping_continues(
    pods: list[FakePod], monkeypatch: pytest.MonkeyPatch
) -> None:
    import epp.metricsscrape.scraper as scraper_module

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("bug in a mapping")

    ds = Datastore()
    ep = ds.upsert_endpoint(Endpoint("pod-a", "127.0.0.1", pods[0].port))
    monkeypatch.setattr(scraper_module, "extract_metrics", broken)
    manager = ScraperManager(ds, FAST)
    await manager.start()
    try:
        await wait_for(lambda: not ep.healthy)
        task = manager._tasks[ep]
        assert not task.done()  # the scraper survived the exception
        monkeypatch.undo()
        await wait_for(lambda: ep.healthy)
    finally:
        await manager.stop()


async def test_failure_count_rule_is_exact(pods: list[FakePod]) -> None:
    from epp.metricsscrape.http_client import AiohttpGetter
    from epp.metricsscrape.scraper import EndpointScraper

    ds = Datastore()
    ep = ds.upsert_endpoint(Endpoint("pod-a", "127.0.0.1", pods[0].port))
    config = ScrapeConfig(interval=0.02, timeout=1.0, staleness_threshold=60.0, max_consecutive_failures=3)
    getter = AiohttpGetter(timeout=1.0, max_connections=4)
    try:
        scraper = EndpointScraper(ep, ds, getter, config)
        assert await scraper.scrape_once() is True
        pods[0].mode = "error"
        assert await scraper.scrape_once() is False
        assert await scraper.scrape_once() is False
        assert ep.healthy  # 2 failures, metrics 'fresh' within 60 s
        assert await scraper.scrape_once() is False
        assert not ep.healthy and ds.healthy_endpoints() == ()
        pods[0].mode = "ok"
        assert await scraper.scrape_once() is True
        assert ep.healthy and scraper.consecutive_failures == 0
    finally:
        await getter.aclose()
