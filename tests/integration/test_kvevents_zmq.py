"""KV events over real ZMQ on loopback: the simulator's publisher (vLLM wire format, replay
socket) and raw PUB sockets feeding the EPP's subscriber manager."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest
import zmq
import zmq.asyncio

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.prefixcache.block_hash import BlockHasher, wire_hash
from epp.prefixcache.config import DEFAULT_REPLAY_PORT_LABEL, DEFAULT_SOCKET_PORT_LABEL, parse_settings
from epp.prefixcache.events import BlockStored
from epp.prefixcache.index import InMemoryKVBlockIndex
from epp.prefixcache.manager import KVEventsManager
from epp.sim.kv_cache import PrefixCachingBlockPool
from epp.sim.kv_publisher import KVEventPublisher
from tests.helpers.procs import free_port
from tests.unit.prefixcache.kv_fixtures import payload, serve

pytestmark = pytest.mark.integration

HASHER = BlockHasher(block_size=16)
_unique = itertools.count(1000)


async def wait_until(
    cond: Callable[[], bool], timeout: float = 10.0, tick: Callable[[], None] | None = None
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        if tick is not None:
            tick()
        await asyncio.sleep(0.02)


def wire(tokens: list[int]) -> list[int | bytes]:
    return [wire_hash(h) for h in HASHER.hash_tokens(tokens)]


def serve_and_publish(pool: PrefixCachingBlockPool, publisher: KVEventPublisher, tokens: list[int]) -> None:
    serve(pool, HASHER, tokens)
    publisher.publish(pool.drain_events())


def publish_filler(pool: PrefixCachingBlockPool, publisher: KVEventPublisher) -> Callable[[], None]:
    """A tick that serves a fresh one-block prompt: keeps a publisher talking until joined."""
    return lambda: serve_and_publish(pool, publisher, [next(_unique)] * 16)


async def bind_publisher(port: int, replay_port: int | None = None) -> KVEventPublisher:
    # A just-closed socket may hold the port for a moment.
    for _ in range(100):
        try:
            return KVEventPublisher(
                f"tcp://127.0.0.1:{port}", bind=True,
                replay_endpoint=f"tcp://127.0.0.1:{replay_port}" if replay_port else None,
            )
        except zmq.ZMQError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"could not bind port {port}")


def pod(name: str, port: int, replay_port: int | None = None) -> Endpoint:
    labels = {DEFAULT_SOCKET_PORT_LABEL: str(port)}
    if replay_port:
        labels[DEFAULT_REPLAY_PORT_LABEL] = str(replay_port)
    return Endpoint(name=name, address="127.0.0.1", port=8000, labels=labels)


def manager_for(ds: Datastore, **events: object) -> tuple[KVEventsManager, InMemoryKVBlockIndex]:
    index = InMemoryKVBlockIndex()
    settings = parse_settings(None, None, dict(events))
    return KVEventsManager(ds, index, settings.kv_events), index


async def test_late_subscriber_catches_up_from_the_replay_socket() -> None:
    port, replay_port = free_port(), free_port()
    publisher = await bind_publisher(port, replay_port)
    pool = PrefixCachingBlockPool(num_blocks=256, block_size=16)
    history = list(range(1, 129))  # 8 blocks served before the EPP subscribed
    serve_and_publish(pool, publisher, history)
    ds = Datastore()
    ep = ds.upsert_endpoint(pod("pod-a", port, replay_port))
    manager, index = manager_for(ds)
    await manager.start()
    try:
        await wait_until(lambda: manager.has_events(ep.key), tick=publish_filler(pool, publisher))
        assert index.longest_prefix(wire(history)) == {ep.key: 8}
        stats = manager.subscribers[ep.key].stats
        assert stats.replays >= 1 and stats.replayed_batches >= 1
        assert stats.gaps == 0 and stats.decode_errors == 0
        # Live events keep flowing after the catch-up.
        follow_up = [*history, *range(500, 532)]
        serve_and_publish(pool, publisher, follow_up)
        await wait_until(lambda: index.longest_prefix(wire(follow_up)) == {ep.key: 10})
    finally:
        await manager.stop()
        await publisher.close()


async def test_gaps_garbage_and_restart_over_a_raw_pub_socket() -> None:
    port = free_port()
    ctx = zmq.asyncio.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"tcp://127.0.0.1:{port}")
    ds = Datastore()
    ep = ds.upsert_endpoint(pod("pod-raw", port))
    manager, index = manager_for(ds)
    await manager.start()
    stats = manager.subscribers[ep.key].stats

    def probe() -> None:  # one-frame garbage until the subscription is live
        pub.send_multipart([b"probe"])

    def stored(h: int) -> bytes:
        return payload([BlockStored(block_hashes=[h], parent_block_hash=None, token_ids=[],
                                    block_size=16, lora_id=None, medium="GPU")])

    async def send(seq: int, body: bytes) -> None:
        before = stats.messages
        await pub.send_multipart([b"", seq.to_bytes(8, "big"), body])
        await wait_until(lambda: stats.messages > before)

    try:
        await wait_until(lambda: stats.messages > 0, tick=probe)
        assert stats.malformed_frames == stats.messages
        await send(0, stored(1))
        await send(1, stored(2))
        await send(5, stored(3))  # 2..4 lost
        assert (stats.gaps, stats.missed_batches, stats.resyncs) == (1, 3, 1)
        assert index.longest_prefix([1]) == {} and index.longest_prefix([3]) == {ep.key: 1}
        await send(6, b"\xc1 not msgpack")
        await send(7, b"\x92\x01")  # truncated msgpack array
        assert stats.decode_errors == 2
        await send(8, stored(4))
        assert index.longest_prefix([4]) == {ep.key: 1}
        await send(0, stored(9))  # the pod restarted: sequence back to 0
        assert stats.publisher_restarts == 1
        assert index.longest_prefix([4]) == {} and index.longest_prefix([9]) == {ep.key: 1}
        assert manager.has_events(ep.key)
    finally:
        await manager.stop()
        pub.close(linger=0)
        ctx.term()


async def test_pod_restart_on_the_same_port_resets_its_view() -> None:
    port = free_port()
    publisher = await bind_publisher(port)
    pool = PrefixCachingBlockPool(num_blocks=64, block_size=16)
    ds = Datastore()
    ep = ds.upsert_endpoint(pod("pod-r", port))
    manager, index = manager_for(ds)
    await manager.start()
    old = list(range(1, 65))
    try:
        await wait_until(lambda: manager.has_events(ep.key), tick=publish_filler(pool, publisher))
        serve_and_publish(pool, publisher, old)
        await wait_until(lambda: index.longest_prefix(wire(old)) == {ep.key: 4})
        await publisher.close()
        publisher = await bind_publisher(port)  # new process: empty cache, sequence from 0
        pool = PrefixCachingBlockPool(num_blocks=64, block_size=16)
        # The subscriber reconnects by itself and drops what the old process had cached.
        await wait_until(lambda: index.longest_prefix(wire(old)) == {}, tick=publish_filler(pool, publisher))
        new = list(range(900, 932))
        serve_and_publish(pool, publisher, new)
        await wait_until(lambda: index.longest_prefix(wire(new)) == {ep.key: 2})
        stats = manager.subscribers[ep.key].stats
        assert stats.reconnects + stats.publisher_restarts >= 1
        # The pod leaves the pool: subscriber stopped, its entries dropped.
        ds.remove_endpoint(ep.key)
        await wait_until(lambda: ep.key not in index.pods_with_blocks())
        assert ep.key not in manager.subscribers
    finally:
        await manager.stop()
        await publisher.close()


async def test_central_mode_maps_llmd_topics_to_pods() -> None:
    port = free_port()
    ds = Datastore()
    ep = ds.upsert_endpoint(Endpoint(name="pod-c", address="127.0.0.1", port=8123))
    manager, index = manager_for(ds, zmqEndpoint=f"tcp://127.0.0.1:{port}", discoverPods=False,
                                 topicFilter="kv@")
    await manager.start()
    publisher = KVEventPublisher(f"tcp://127.0.0.1:{port}", topic="kv@127.0.0.1:8123@m", bind=False)
    stranger = KVEventPublisher(f"tcp://127.0.0.1:{port}", topic="kv@10.9.9.9:8000@m", bind=False)
    pool = PrefixCachingBlockPool(num_blocks=64, block_size=16)
    other = PrefixCachingBlockPool(num_blocks=64, block_size=16)
    try:
        await wait_until(lambda: manager.has_events(ep.key), tick=publish_filler(pool, publisher))
        tokens = list(range(300, 348))
        serve_and_publish(pool, publisher, tokens)
        await wait_until(lambda: index.longest_prefix(wire(tokens)) == {ep.key: 3})
        assert manager.central is not None
        await wait_until(lambda: manager.central is not None and manager.central.unknown_topic_messages > 0,
                         tick=publish_filler(other, stranger))
        assert index.pods_with_blocks() == {ep.key}
    finally:
        await publisher.close()
        await stranger.close()
        await manager.stop()


async def bind_rank_publishers(size: int) -> tuple[int, list[KVEventPublisher]]:
    """Publishers of data-parallel ranks 0..size-1 on port + rank, as vLLM binds them
    (ZmqEventPublisher.offset_endpoint_port); retried until a free run of ports is found."""
    for _ in range(50):
        port = free_port()
        publishers: list[KVEventPublisher] = []
        try:
            for rank in range(size):
                publishers.append(KVEventPublisher(f"tcp://127.0.0.1:{port + rank}", bind=True,
                                                   data_parallel_rank=rank))
            return port, publishers
        except zmq.ZMQError:
            for p in publishers:
                await p.close()
    raise AssertionError("no run of free ports")


async def test_data_parallel_ranks_publish_on_port_plus_rank() -> None:
    port, publishers = await bind_rank_publishers(3)
    pools = [PrefixCachingBlockPool(num_blocks=256, block_size=16) for _ in publishers]
    ds = Datastore()
    ep = ds.upsert_endpoint(pod("dp-pod", port))
    manager, index = manager_for(ds, dataParallelSize=3)
    await manager.start()
    try:
        assert sorted(sub.endpoint for sub in manager.subscribers.values()) == [
            f"tcp://127.0.0.1:{port + r}" for r in range(3)]
        assert manager.index_keys(ep.key) == [ep.key, f"{ep.key}#dp1", f"{ep.key}#dp2"]
        assert manager.has_data_parallel_pods

        def tick() -> None:
            for pool, publisher in zip(pools, publishers, strict=True):
                publish_filler(pool, publisher)()

        await wait_until(lambda: all(s.stream.has_events for s in manager.subscribers.values()), tick=tick)
        # Rank 2 alone computed this prompt: its events arrive on port + 2 and count for the pod.
        prompt = list(range(7000, 7064))
        serve_and_publish(pools[2], publishers[2], prompt)
        await wait_until(lambda: index.longest_prefix(wire(prompt)) == {f"{ep.key}#dp2": 4})
        assert manager.has_events(ep.key)
        assert all(s.stats.rank_mismatches == 0 for s in manager.subscribers.values())
        # The pod leaving drops every rank's subscriber and blocks.
        ds.remove_endpoint(ep.key)
        await wait_until(lambda: not manager.subscribers and not index.pods_with_blocks())
        assert not manager.has_data_parallel_pods
    finally:
        await manager.stop()
        for p in publishers:
            await p.close()
