"""Local files -> datastore -> scrapers -> /readyz, with real loopback pods: pod health is
reported in the body but does not make the EPP unready (it can still answer)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from epp.datastore.datastore import Datastore
from epp.datastore.local import LocalEndpointSource
from epp.metricsscrape.scraper import ScrapeConfig, ScraperManager
from epp.observability.exposition import HttpServer
from epp.observability.health import ReadinessProbe, health_app
from tests.unit.metricsscrape.fake_pods import start_pod

POOL = """
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool}
spec:
  selector: {matchLabels: {app: sim}}
  targetPorts: [{number: 8000}]
"""


async def test_readyz_reports_but_does_not_follow_pod_health(tmp_path: Path) -> None:
    pod = await start_pod()
    (tmp_path / "pool.yaml").write_text(POOL)
    (tmp_path / "pods.yaml").write_text(f"- {{name: sim-0, ip: 127.0.0.1, port: {pod.port}, labels: {{app: sim}}}}\n")
    ds = Datastore()
    source = LocalEndpointSource(ds, tmp_path / "pool.yaml", tmp_path / "pods.yaml", poll_interval=0.05)
    scrapers = ScraperManager(ds, ScrapeConfig(interval=0.02, timeout=0.1, staleness_threshold=0.3))
    server = HttpServer(health_app(ReadinessProbe(ds)), "127.0.0.1", 0)
    await source.start()
    await scrapers.start()
    await server.start()

    async def readyz(client: httpx.AsyncClient, healthy: int) -> dict[str, object]:
        deadline = time.monotonic() + 5
        while True:
            resp = await client.get("/readyz")
            body: dict[str, object] = resp.json()
            if body.get("healthy_endpoints") == healthy or time.monotonic() > deadline:
                assert resp.status_code == 200 and body["healthy_endpoints"] == healthy, resp.text
                return body
            await asyncio.sleep(0.02)

    try:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
            await readyz(client, 1)
            pod.mode = "error"
            body = await readyz(client, 0)
            assert body["ready"] is True
            assert body["warning"] == "0 of 1 endpoints healthy (not ready or metrics stale)"
            pod.mode = "ok"
            await readyz(client, 1)
    finally:
        await server.stop()
        await scrapers.stop()
        await source.stop()
        assert pod.runner is not None
        await pod.runner.cleanup()
