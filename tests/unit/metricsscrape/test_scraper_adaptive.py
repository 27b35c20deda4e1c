"""The adaptive scrape interval: idle pods with unchanged metrics are scraped less often, and
a request sent to such a pod brings it back to the base interval at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.metricsscrape.scraper import ScrapeConfig, ScraperManager
from tests.unit.metricsscrape.fake_pods import FakePod, start_pod
from tests.unit.metricsscrape.vllm_pages import vllm_page

BASE, IDLE = 0.02, 0.16
CONFIG = ScrapeConfig(interval=BASE, idle_interval=IDLE, timeout=0.1, staleness_threshold=0.5)


def idle_page(waiting: int) -> str:
    return vllm_page(waiting=waiting, running=0, kv=0.0)


@pytest.fixture
async def pod() -> AsyncIterator[FakePod]:
    started = await start_pod()
    started.page = idle_page
    started.waiting = 0
    yield started
    assert started.runner is not None
    await started.runner.cleanup()


async def hits_over(pod: FakePod, seconds: float) -> int:
    before = pod.hits
    await asyncio.sleep(seconds)
    return pod.hits - before


async def test_idle_unchanged_pod_backs_off_to_the_idle_interval(pod: FakePod) -> None:
    ds = Datastore()
    ep = ds.upsert_endpoint(Endpoint("pod-a", "127.0.0.1", pod.port))
    manager = ScraperManager(ds, CONFIG)
    await manager.start()
    try:
        await asyncio.sleep(0.5)  # 0.02 -> 0.04 -> 0.08 -> 0.16
        scraper = manager.scrapers[ep]
        assert scraper.current_interval == IDLE and scraper.backed_off
        idle_hits = await hits_over(pod, 0.8)
        assert 3 <= idle_hits <= 7  # ~0.8 / 0.16, not ~0.8 / 0.02 = 40
        assert ep.healthy  # idle_interval + timeout stays within the staleness threshold

        pod.waiting = 2  # the pod gets busy: the next scrape sees it and returns to the base rate
        deadline = time.monotonic() + 2
        while ep.metrics.waiting_queue_size != 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert scraper.current_interval == BASE
        assert await hits_over(pod, 0.4) >= 6  # 0.4 / 0.02 = 20 at the base rate; idle would be <= 3
    finally:
        await manager.stop()


async def test_a_request_in_flight_wakes_a_backed_off_scraper_at_once(pod: FakePod) -> None:
    ds = Datastore()
    ep = ds.upsert_endpoint(Endpoint("pod-a", "127.0.0.1", pod.port))
    manager = ScraperManager(ds, CONFIG)
    await manager.start()
    try:
        await asyncio.sleep(0.5)
        scraper = manager.scrapers[ep]
        assert scraper.backed_off
        await asyncio.sleep(0.03)  # away from the last scrape: the next one is up to 0.16 s off
        before, sent = pod.hits, time.monotonic()
        ep.inflight = 1  # what the request path does when it sends a request to the pod
        while pod.hits == before:
            await asyncio.sleep(0.002)
        assert time.monotonic() - sent < 0.1  # the watcher (every 0.02 s) woke it, no idle wait
        assert scraper.current_interval == BASE
        assert await hits_over(pod, 0.4) >= 6  # stays at the base rate (~20) while the request is in flight
    finally:
        ep.inflight = 0
        await manager.stop()


def test_idle_interval_is_capped_by_staleness_and_never_below_the_interval() -> None:
    assert ScrapeConfig().effective_idle_interval == 0.5  # default: 1 s staleness - 0.5 s timeout
    assert ScrapeConfig(interval=0.05, idle_interval=5.0, timeout=0.5,
                        staleness_threshold=1.0).effective_idle_interval == 0.5
    assert ScrapeConfig(interval=0.05, idle_interval=0.05).effective_idle_interval == 0.05  # off
    assert ScrapeConfig(interval=0.3, idle_interval=1.0, timeout=0.5,
                        staleness_threshold=0.6).effective_idle_interval == 0.3
    with pytest.raises(ValueError, match="idleInterval"):
        ScrapeConfig(idle_interval=0).validate()


async def test_adaptive_interval_off_scrapes_at_the_base_rate(pod: FakePod) -> None:
    ds = Datastore()
    ds.upsert_endpoint(Endpoint("pod-a", "127.0.0.1", pod.port))
    manager = ScraperManager(ds, ScrapeConfig(interval=BASE, idle_interval=BASE, timeout=0.1,
                                              staleness_threshold=0.5))
    await manager.start()
    try:
        await asyncio.sleep(0.2)
        assert await hits_over(pod, 0.4) >= 8  # ~20 at 0.02 s; the adaptive interval would give <= 3
    finally:
        await manager.stop()
