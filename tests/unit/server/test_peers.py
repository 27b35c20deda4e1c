"""PeerBus, in-flight sharing and merged worker metrics, in one process."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import generate_latest

from epp.datastore import Datastore, Endpoint
from epp.datastore.inflight import InflightConfig, InflightTracker
from epp.server.peers import InflightSharing, PeerBus, merge_expositions


async def test_bus_delivers_to_the_other_workers(tmp_path: Path) -> None:
    buses = [PeerBus(tmp_path, i, 3) for i in range(3)]
    got: dict[int, list[tuple[int, object]]] = {i: [] for i in range(3)}
    for i, bus in enumerate(buses):
        bus.subscribe("t", lambda w, p, i=i: got[i].append((w, p)))  # type: ignore[misc]
        await bus.start()
    buses[0].publish("t", ["pod-a", [1, 2, 3]])
    await asyncio.sleep(0.05)
    assert got == {0: [], 1: [(0, ["pod-a", [1, 2, 3]])], 2: [(0, ["pod-a", [1, 2, 3]])]}
    for bus in buses:
        await bus.stop()


async def test_publishing_to_a_missing_peer_is_dropped_not_raised(tmp_path: Path) -> None:
    bus = PeerBus(tmp_path, 0, 2)
    await bus.start()
    bus.publish("t", 1)
    assert bus.dropped == 1
    await bus.stop()


async def test_inflight_counts_reach_the_peer(tmp_path: Path) -> None:
    stores = [Datastore(), Datastore()]
    for ds in stores:
        ds.upsert_endpoint(Endpoint(name="p", address="127.0.0.1", port=1))
    buses = [PeerBus(tmp_path, i, 2) for i in range(2)]
    sharing = [InflightSharing(b, ds, interval=0.01) for b, ds in zip(buses, stores, strict=True)]
    for b, s in zip(buses, sharing, strict=True):
        await b.start()
        await s.start()
    stores[0].endpoints()[0].inflight = 5
    await asyncio.sleep(0.1)
    assert stores[1].endpoints()[0].peer_inflight == 5
    stores[0].endpoints()[0].inflight = 0
    await asyncio.sleep(0.1)
    assert stores[1].endpoints()[0].peer_inflight == 0
    for b, s in zip(buses, sharing, strict=True):
        await s.stop()
        await b.stop()


async def test_inflight_tokens_reach_the_peer_and_sum_over_workers(tmp_path: Path) -> None:
    stores = [Datastore() for _ in range(3)]
    for ds in stores:
        ds.upsert_endpoint(Endpoint(name="p", address="127.0.0.1", port=1))
    buses = [PeerBus(tmp_path, i, 3) for i in range(3)]
    trackers = [InflightTracker(ds, InflightConfig(prefill_window_s=3600)) for ds in stores]
    sharing = [InflightSharing(b, ds, interval=0.01, tracker=t)
               for b, ds, t in zip(buses, stores, trackers, strict=True)]
    for b, s in zip(buses, sharing, strict=True):
        await b.start()
        await s.start()
    trackers[0].dispatch(stores[0].endpoints(), 700, 640)
    handle = trackers[1].dispatch(stores[1].endpoints(), 300)
    await asyncio.sleep(0.1)
    ep = stores[2].endpoints()[0]
    assert (ep.peer_inflight, ep.peer_inflight_tokens) == (2, 1000)
    # the recent-prompt estimate travels too, in quanta of 64 tokens (a slow decay: 640 -> 576)
    assert ep.peer_recent_prompt_tokens == 576.0
    trackers[1].complete(handle)
    await asyncio.sleep(0.1)
    assert (ep.peer_inflight, ep.peer_inflight_tokens) == (1, 700)
    for b, s in zip(buses, sharing, strict=True):
        await s.stop()
        await b.stop()


def test_a_silent_worker_stops_counting() -> None:
    class Clock:
        now = 10.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    ds = Datastore()
    ep = ds.upsert_endpoint(Endpoint(name="p", address="127.0.0.1", port=1))
    sharing = InflightSharing(PeerBus(Path("/nonexistent"), 0, 2), ds, peer_timeout=3.0, clock=clock)
    sharing._on_counts(1, {ep.key: [4, 400]})  # worker 1, then it dies (no restart)
    assert (ep.peer_inflight, ep.peer_inflight_tokens) == (4, 400)
    clock.now += 2.0
    assert sharing.expire_silent_peers() == []
    clock.now += 2.0
    assert sharing.expire_silent_peers() == [1]
    assert (ep.peer_inflight, ep.peer_inflight_tokens) == (0, 0)


def test_a_restarted_worker_replaces_its_old_counts() -> None:
    ds = Datastore()
    ep = ds.upsert_endpoint(Endpoint(name="p", address="127.0.0.1", port=1))
    sharing = InflightSharing(PeerBus(Path("/nonexistent"), 0, 2), ds)
    sharing._on_counts(1, {ep.key: [4, 400]})
    sharing._on_counts(1, {})  # its first heartbeat after the restart: nothing in flight
    assert (ep.peer_inflight, ep.peer_inflight_tokens) == (0, 0)


def test_merged_exposition_labels_each_worker() -> None:
    texts = {}
    for worker, value in ((0, 2), (1, 3)):
        reg = CollectorRegistry()
        Counter("scheduler_requests_total", "decisions", ["profile"], registry=reg).labels("default").inc(value)
        texts[worker] = generate_latest(reg).decode()
    merged = merge_expositions(texts).decode()
    assert merged.count("# TYPE scheduler_requests_total counter") == 1
    assert 'scheduler_requests_total{profile="default",worker="0"} 2.0' in merged
    assert 'scheduler_requests_total{profile="default",worker="1"} 3.0' in merged
