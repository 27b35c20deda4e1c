"""State shared between the EPP worker processes of one host.

`epp serve --workers N` runs N processes on the same gRPC port (SO_REUSEPORT), and Envoy's
connections spread over them. Each worker decides alone, so what one worker learns must
reach the others or routing quality drops as workers are added:
- the prompts a worker sent to a pod (the approximate prefix-cache LRU),
- how many requests each worker has in flight to each pod, and
- with predicted-latency routing, each request's dispatch, first byte and end
  (epp/latency/sharing.py).
Workers tell each other over unix datagram sockets in a private directory, fire and forget.
A lost message costs a little routing precision, never correctness, so there are no
acknowledgements.

Linux queues at most `net.unix.max_dgram_qlen` datagrams (10 by default) per receiving
socket, so one datagram per message would be lost in any burst a busy receiver did not drain
in time. The messages published in one event-loop iteration therefore travel together, in as
few datagrams as MAX_DATAGRAM_BYTES allows; and a datagram a peer's full queue refused is
kept and sent again shortly, up to BACKLOG_DATAGRAMS per peer, before anything is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack

from epp.aio import cancel_and_wait
from epp.datastore.datastore import Datastore
from epp.datastore.inflight import InflightTracker

log = logging.getLogger(__name__)

SERVICE_KEY = "peers.bus"
Handler = Callable[[int, Any], None]

MAX_DATAGRAM_BYTES = 60_000  # under the default socket send buffer (net.core.wmem_default)
BACKLOG_DATAGRAMS = 256  # datagrams kept per peer while its queue is full
RETRY_S = 0.002  # how soon a refused datagram is sent again
# The peer's socket is full: keep the datagram and retry. Any other error: the peer is not
# there (not up yet, restarting), drop.
_FULL = (errno.EAGAIN, errno.ENOBUFS)


class PeerBus:
    def __init__(self, directory: Path, worker_id: int, worker_count: int) -> None:
        self.directory = directory
        self.worker_id = worker_id
        self.worker_count = worker_count
        self._handlers: dict[str, Handler] = {}
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._peers = [str(directory / f"worker-{i}.sock") for i in range(worker_count) if i != worker_id]
        self._outbox: list[bytes] = []  # packed (topic, payload) published since the last flush
        self._flush_pending = False
        # peer socket path -> datagrams its full queue refused, oldest first
        self._backlog: dict[str, deque[tuple[bytes, int]]] = {peer: deque() for peer in self._peers}
        self._retry: asyncio.TimerHandle | None = None
        self._header = msgpack.packb(worker_id)
        self.sent = 0  # messages handed to the kernel, per peer
        self.dropped = 0  # messages lost, per peer
        self.received = 0
        self.datagrams_sent = 0

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers[topic] = handler

    def publish(self, topic: str, payload: Any) -> None:
        """Send `payload` to every other worker's `topic` handler, with the other messages of
        this event-loop iteration (on the loop's thread only)."""
        if self._sock is None or not self._peers:
            return
        self._outbox.append(msgpack.packb((topic, payload), use_bin_type=True))
        if not self._flush_pending:
            self._flush_pending = True
            assert self._loop is not None
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send what was published since the last flush."""
        self._flush_pending = False
        outbox, self._outbox = self._outbox, []
        if self._sock is None or not outbox:
            return
        for datagram, count in _datagrams(self._header, outbox):
            for peer in self._peers:
                self._send(peer, datagram, count)

    def _send(self, peer: str, datagram: bytes, count: int) -> None:
        """Queue `datagram` behind what waits for `peer` already (order kept), then send."""
        backlog = self._backlog[peer]
        if len(backlog) >= BACKLOG_DATAGRAMS:
            self.dropped += backlog.popleft()[1]
        backlog.append((datagram, count))
        self._drain(peer, backlog)

    def _drain(self, peer: str, backlog: deque[tuple[bytes, int]]) -> None:
        """Send `peer`'s waiting datagrams, oldest first, until its queue is full (retried in
        RETRY_S) or it is not there (all dropped)."""
        sock = self._sock
        if sock is None:
            return
        while backlog:
            try:
                sock.sendto(backlog[0][0], peer)
            except OSError as e:
                if e.errno in _FULL:
                    if self._retry is None and self._loop is not None:
                        self._retry = self._loop.call_later(RETRY_S, self._resend)
                    return
                if e.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                    log.warning("peer bus: cannot send to %s: %s", peer, e)
                self.dropped += sum(count for _, count in backlog)
                backlog.clear()
                return
            self.sent += backlog.popleft()[1]
            self.datagrams_sent += 1

    def _resend(self) -> None:
        self._retry = None
        for peer, backlog in self._backlog.items():
            self._drain(peer, backlog)

    def backlog(self) -> int:
        """Datagrams waiting for a peer's full queue to drain."""
        return sum(len(b) for b in self._backlog.values())

    async def start(self) -> None:
        path = self.directory / f"worker-{self.worker_id}.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as e:
                log.warning("peer bus: receive failed: %s", e)
                return
            self._dispatch(data)

    def _dispatch(self, data: bytes) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(data)
        try:
            worker = next(unpacker)
            for topic, payload in unpacker:
                handler = self._handlers.get(topic)
                if handler is not None:
                    self.received += 1
                    try:
                        handler(worker, payload)
                    except Exception:
                        log.exception("peer bus: handler for %r failed", topic)
        except (ValueError, TypeError, StopIteration, msgpack.UnpackException) as e:
            log.warning("peer bus: dropping an undecodable message: %s", e)

    async def stop(self) -> None:
        sock, self._sock = self._sock, None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"worker-{self.worker_id}.sock").unlink()


def _datagrams(header: bytes, messages: list[bytes]) -> Iterable[tuple[bytes, int]]:
    """The packed messages cut into datagrams of the sender's id followed by as many messages
    as fit in MAX_DATAGRAM_BYTES (a bigger message travels alone), with their counts."""
    chunk: list[bytes] = [header]
    size = len(header)
    for message in messages:
        if len(chunk) > 1 and size + len(message) > MAX_DATAGRAM_BYTES:
            yield b"".join(chunk), len(chunk) - 1
            chunk, size = [header], len(header)
        chunk.append(message)
        size += len(message)
    if len(chunk) > 1:
        yield b"".join(chunk), len(chunk) - 1


class InflightSharing:
    """Publishes this worker's in-flight requests and tokens per endpoint every `interval`
    and keeps `Endpoint.peer_inflight` / `peer_inflight_tokens` = the sums over the other
    workers. A worker heard from for the last time more than `peer_timeout` ago (it died and
    was not restarted, or was restarted and lost its ledger) no longer counts: its
    heartbeat is one message per `HEARTBEAT_INTERVALS` intervals even when nothing changes."""

    HEARTBEAT_INTERVALS = 100

    # The recent-prompt-tokens estimate decays continuously; it is sent rounded to this many
    # tokens so a decaying value does not cause a message every interval.
    RECENT_QUANTUM = 64

    def __init__(self, bus: PeerBus, datastore: Datastore, interval: float = 0.01,
                 peer_timeout: float = 3.0, clock: Callable[[], float] = time.monotonic,
                 tracker: InflightTracker | None = None) -> None:
        self.bus = bus
        self.datastore = datastore
        self.tracker = tracker
        self.interval = interval
        self.peer_timeout = peer_timeout
        self.clock = clock
        # worker -> (endpoint key -> (requests, tokens, recent prompt tokens)), and when we
        # last heard from it
        self._remote: dict[int, dict[str, tuple[int, int, int]]] = {}
        self._heard: dict[int, float] = {}
        self._last_sent: dict[str, tuple[int, int, int]] = {}
        self._task: asyncio.Task[None] | None = None
        bus.subscribe("inflight", self._on_counts)

    def _on_counts(self, worker: int, counts: dict[str, Any]) -> None:
        parsed: dict[str, tuple[int, int, int]] = {}
        for key, value in counts.items():
            if isinstance(value, list | tuple) and len(value) >= 2:
                recent = int(value[2]) if len(value) > 2 else 0
                parsed[key] = (int(value[0]), int(value[1]), recent)
            elif isinstance(value, int):  # a peer of the previous version: requests only
                parsed[key] = (value, 0, 0)
        previous = self._remote.get(worker, {})
        self._remote[worker] = parsed
        self._heard[worker] = self.clock()
        self._refresh(previous.keys() | parsed.keys())

    def _refresh(self, keys: Iterable[str]) -> None:
        for key in keys:
            ep = self.datastore.get(key)
            if ep is not None:
                ep.peer_inflight = sum(c[key][0] for c in self._remote.values() if key in c)
                ep.peer_inflight_tokens = sum(c[key][1] for c in self._remote.values() if key in c)
                ep.peer_recent_prompt_tokens = float(sum(c[key][2] for c in self._remote.values() if key in c))

    def expire_silent_peers(self) -> list[int]:
        """Forget the counts of workers not heard from for `peer_timeout` seconds."""
        cutoff = self.clock() - self.peer_timeout
        gone = [w for w, at in self._heard.items() if at < cutoff]
        for worker in gone:
            del self._heard[worker]
            counts = self._remote.pop(worker, {})
            self._refresh(counts.keys())
            log.warning("peer bus: no in-flight counts from worker %d for %.1fs; dropping its %d "
                        "endpoint counts", worker, self.peer_timeout, len(counts))
        return gone

    def local_counts(self) -> dict[str, tuple[int, int, int]]:
        tracker, quantum = self.tracker, self.RECENT_QUANTUM
        out: dict[str, tuple[int, int, int]] = {}
        for ep in self.datastore.endpoints():
            recent = int(tracker.recent_prompt_tokens(ep)) // quantum * quantum if tracker is not None else 0
            if ep.inflight or ep.inflight_tokens or recent:
                out[ep.key] = (ep.inflight, ep.inflight_tokens, recent)
        return out

    async def _run(self) -> None:
        heartbeat = 0
        while True:
            await asyncio.sleep(self.interval)
            counts = self.local_counts()
            heartbeat += 1
            # Send on change, and on every heartbeat so a restarted peer catches up.
            if counts != self._last_sent or heartbeat >= self.HEARTBEAT_INTERVALS:
                heartbeat = 0
                self._last_sent = counts
                self.bus.publish("inflight", {k: list(v) for k, v in counts.items()})
                self.expire_silent_peers()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inflight-sharing")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)


class WorkerMetrics:
    """One /metrics for all workers, served by worker 0.

    Every worker keeps its own registry; workers > 0 serve theirs on a private ephemeral port
    that they announce on the bus. A scrape of worker 0 fetches the others' and merges all
    families, each series labelled worker="<id>" (sum without(worker) in PromQL for totals).
    """

    def __init__(self, bus: PeerBus, registry: Any) -> None:
        self.bus = bus
        self.registry = registry
        self.peer_ports: dict[int, int] = {}
        bus.subscribe("metrics-port", self._on_port)

    def _on_port(self, worker: int, port: int) -> None:
        self.peer_ports[worker] = port

    async def announce(self, port: int, interval: float = 1.0) -> None:
        """Workers > 0: keep telling worker 0 where their metrics are (it may restart)."""
        while True:
            self.bus.publish("metrics-port", port)
            await asyncio.sleep(interval)

    async def render(self) -> bytes:
        from aiohttp import ClientError, ClientSession, ClientTimeout
        from prometheus_client.exposition import generate_latest

        texts = {self.bus.worker_id: generate_latest(self.registry).decode()}
        async with ClientSession(timeout=ClientTimeout(total=1.0)) as session:
            async def fetch(worker: int, port: int) -> None:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        texts[worker] = await resp.text()
                except (ClientError, TimeoutError) as e:
                    log.warning("metrics of worker %d unavailable: %s", worker, e)

            await asyncio.gather(*(fetch(w, p) for w, p in sorted(self.peer_ports.items())))
        return merge_expositions(texts)


def merge_expositions(texts: dict[int, str]) -> bytes:
    """Merge Prometheus text expositions of several workers, labelling each series."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.samples import Sample

    merged: dict[str, Metric] = {}
    for worker, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            target.samples += [Sample(s.name, {**s.labels, "worker": str(worker)}, s.value, s.timestamp, s.exemplar)
                               for s in family.samples]

    class _Merged:
        def collect(self) -> list[Metric]:
            return list(merged.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)


class PeerBusCollector:
    """The bus's counters as Prometheus metrics: a worker whose messages are dropped routes on
    a partial view of the others' requests."""

    def __init__(self, bus: PeerBus) -> None:
        self.bus = bus

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        bus = self.bus
        yield CounterMetricFamily("epp_peer_messages_sent", "Messages sent to the other workers (one per peer).",
                                  value=bus.sent)
        yield CounterMetricFamily("epp_peer_messages_dropped",
                                  "Messages to the other workers lost: the peer was not up, or its queue "
                                  "stayed full.", value=bus.dropped)
        yield CounterMetricFamily("epp_peer_messages_received", "Messages received from the other workers.",
                                  value=bus.received)
        yield GaugeMetricFamily("epp_peer_backlog_datagrams",
                                "Datagrams waiting for a peer's full queue to drain.", value=bus.backlog())
