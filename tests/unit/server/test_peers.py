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
    bus.publish("t", 2)
    await asyncio.sleep(0)  # the loop iteration's messages go out together
    assert (bus.dropped, bus.backlog()) == (2, 0)
    await bus.stop()


async def test_a_burst_arrives_whole_in_a_few_datagrams(tmp_path: Path) -> None:
    """Linux queues only net.unix.max_dgram_qlen (10 by default) datagrams per receiver: a
    burst of one datagram per message would mostly be lost."""
    buses = [PeerBus(tmp_path, i, 2) for i in range(2)]
    got: list[object] = []
    buses[1].subscribe("t", lambda w, p: got.append(p))
    for bus in buses:
        await bus.start()
    big = "x" * 20_000  # three of these fill a datagram
    for i in range(3000):
        buses[0].publish("t", [i, big] if i % 500 == 0 else i)
    await asyncio.sleep(0.1)
    assert [p if isinstance(p, int) else p[0] for p in got] == list(range(3000))  # type: ignore[index]
    assert buses[0].dropped == 0 and buses[0].datagrams_sent < 10
    for bus in buses:
        await bus.stop()


async def test_a_full_peer_queue_is_retried_in_order_not_dropped(tmp_path: Path) -> None:
    buses = [PeerBus(tmp_path, i, 2) for i in range(2)]
    got: list[object] = []
    buses[1].subscribe("t", lambda w, p: got.append(p))
    for bus in buses:
        await bus.start()
    loop = asyncio.get_running_loop()
    reader = buses[1]._sock.fileno()  # type: ignore[union-attr]
    loop.remove_reader(reader)  # the receiver is busy: its queue fills
    sent = 0
    # A datagram per loop iteration until the kernel refuses one (10 queued by default,
    # net.unix.max_dgram_qlen; the sender's buffer bounds it too), then 20 more.
    while buses[0].backlog() < 20 and sent < 20_000:
        buses[0].publish("t", sent)
        sent += 1
        await asyncio.sleep(0)
    assert buses[0].backlog() == 20 and buses[0].dropped == 0
    loop.add_reader(reader, buses[1]._on_readable)
    await asyncio.sleep(0.2)
    assert got == list(range(sent)) and buses[0].backlog() == 0
    for bus in buses:
        await bus.stop()


async def test_a_peer_that_stops_reading_costs_a_bounded_backlog(tmp_path: Path) -> None:
    from epp.server import peers

    buses = [PeerBus(tmp_path, i, 2) for i in range(2)]
    for bus in buses:
        await bus.start()
    asyncio.get_running_loop().remove_reader(buses[1]._sock.fileno())  # type: ignore[union-attr]
    sent = 0
    while buses[0].backlog() < peers.BACKLOG_DATAGRAMS and sent < 50_000:
        buses[0].publish("t", sent)
        sent += 1
        await asyncio.sleep(0)
    assert buses[0].dropped == 0
    for _ in range(100):  # each pushes the oldest datagram out of the full backlog
        buses[0].publish("t", sent)
        sent += 1
        await asyncio.sleep(0)
    assert buses[0].backlog() == peers.BACKLOG_DATAGRAMS and buses[0].dropped == 100
    assert buses[0].sent + buses[0].backlog() + buses[0].dropped == sent
    for bus in buses:
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
