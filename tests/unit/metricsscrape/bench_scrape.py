"""Benchmarks behind docs/observability.md (not collected by pytest).

    .venv/bin/python -m tests.unit.metricsscrape.bench_scrape

1. parse one vLLM page: prometheus_client's parser vs extract_metrics;
2. scraper CPU per scrape for 4 pods at 50 ms, pods served from a child process, for
   each transport (bounded: 3 s per transport).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import timeit

from prometheus_client.parser import text_string_to_metric_families

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.metricsscrape.http_client import Transport
from epp.metricsscrape.mapping import VLLM, extract_metrics
from epp.metricsscrape.scraper import ScrapeConfig, ScraperManager
from tests.helpers.procs import REPO, free_port, wait_port
from tests.unit.metricsscrape.vllm_pages import vllm_page

WANTED = {"vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
          "vllm:lora_requests_info", "vllm:cache_config_info"}

PODS_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from aiohttp import web
    from tests.unit.metricsscrape.vllm_pages import vllm_page
    PAGE = vllm_page().encode()
    async def main(ports):
        for p in ports:
            app = web.Application()
            async def metrics(_): return web.Response(body=PAGE, content_type="text/plain")
            app.router.add_get("/metrics", metrics)
            r = web.AppRunner(app, access_log=None); await r.setup()
            await web.TCPSite(r, "127.0.0.1", p).start()
        await asyncio.sleep(60)
    asyncio.run(main([int(x) for x in sys.argv[1:]]))
""")


def bench_parser() -> None:
    page = vllm_page()

    def full() -> None:
        for fam in text_string_to_metric_families(page):
            if fam.name in WANTED:
                _ = fam.samples

    print(f"page: {len(page)} bytes, {page.count(chr(10))} lines")
    for name, fn, n in (("prometheus_client parser", full, 50),
                        ("extract_metrics", lambda: extract_metrics(page, VLLM, 0.0), 2000)):
        per = min(timeit.repeat(fn, number=n, repeat=5)) / n
        print(f"  {name}: {per * 1e6:.1f} us/page")


async def bench_transport(ports: list[int], transport: Transport, secs: float = 3.0) -> None:
    ds = Datastore()
    for i, p in enumerate(ports):
        ds.upsert_endpoint(Endpoint(f"pod-{i}", "127.0.0.1", p))
    manager = ScraperManager(ds, ScrapeConfig(interval=0.05, transport=transport))
    await manager.start()
    try:
        await asyncio.sleep(0.5)
        c0, s0 = time.process_time(), sum(s.scrapes for s in manager.scrapers.values())
        await asyncio.sleep(secs)
        c1, s1 = time.process_time(), sum(s.scrapes for s in manager.scrapers.values())
    finally:
        await manager.stop()
    n = s1 - s0
    print(f"  {transport}: {n / secs:.0f} scrapes/s, {1e3 * (c1 - c0) / n:.2f} ms CPU/scrape, "
          f"{100 * (c1 - c0) / secs:.1f}% of a core")


def main() -> None:
    bench_parser()
    ports = [free_port() for _ in range(4)]
    pods = subprocess.Popen([sys.executable, "-c", PODS_SCRIPT, *map(str, ports)], cwd=REPO)
    try:
        for p in ports:
            wait_port(p)
        print(f"scraping {len(ports)} pods every 50 ms:")
        for transport in ("aiohttp", "httpx"):
            asyncio.run(bench_transport(ports, transport))
    finally:
        pods.terminate()
        pods.wait(5)


if __name__ == "__main__":
    main()
