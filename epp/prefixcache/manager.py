"""Follows the Datastore and runs one KV-event subscriber per pool endpoint.

Endpoints come and go through `Datastore.add_listener`; the manager starts a `PodSubscriber`
for each new endpoint, restarts it when the endpoint's address or event port changes, and on
removal stops it and drops the pod's entries from the index. It also runs the optional
central (bound) subscriber. It needs a running asyncio loop: call `await start()` from the
server's startup (epp.prefixcache.start_services does) and `await stop()` on shutdown;
listener calls that arrive before `start()` are picked up by `start()` from the datastore.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any

import zmq
import zmq.asyncio

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.prefixcache.config import MAX_DATA_PARALLEL_SIZE, KVEventsSettings
from epp.prefixcache.hash_check import HashSettingsChecker
from epp.prefixcache.index import KVBlockIndex
from epp.prefixcache.subscriber import (
    CentralSubscriber,
    GroupSpec,
    KVEventStream,
    PodSubscriber,
    SocketSettings,
    SubscriberStats,
    group_key,
    rank_key,
)

log = logging.getLogger(__name__)


def format_endpoint(template: str, ep: Endpoint, port: int, replay_port: int) -> str:
    host = f"[{ep.address}]" if ":" in ep.address else ep.address
    return template.format(host=host, address=ep.address, port=port, name=ep.name,
                           namespace=ep.namespace, serving_port=ep.port, replay_port=replay_port)


class KVEventsManager:
    def __init__(
        self,
        datastore: Datastore,
        index: KVBlockIndex,
        settings: KVEventsSettings,
        checker: HashSettingsChecker | None = None,
    ) -> None:
        self.datastore = datastore
        self.index = index
        self.settings = settings
        self.checker = checker
        # Keyed by rank_key(pod, rank): one subscriber per data-parallel rank of a pod.
        self.subscribers: dict[str, PodSubscriber] = {}
        self._dp_size: dict[str, int] = {}  # pod -> number of data-parallel ranks subscribed
        self._dp_pods: set[str] = set()  # pods with more than one rank (kept for the hot path)
        # LoRA adapter names seen in the pods' BlockStored events (the scorer reads it).
        self.lora_names: set[str] = set()
        # Index keys (pods or their data-parallel ranks) whose events show several KV-cache
        # groups (hybrid models); the scorer applies vLLM's per-group hit rule to them.
        self.hybrid_keys: set[str] = set()
        self.central: CentralSubscriber | None = None
        # Streams fed in-process (an embedded simulator, tests): no socket, same bookkeeping.
        self.local_streams: dict[str, KVEventStream] = {}
        self._ctx: zmq.asyncio.Context | None = None
        self._started = False
        self._start_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        datastore.add_listener(self._on_endpoint)

    @property
    def started(self) -> bool:
        return self._started

    def socket_settings(self) -> SocketSettings:
        s = self.settings
        return SocketSettings(
            topic_filter=s.topic_filter, rcv_hwm=s.rcv_hwm, max_message_bytes=s.max_message_bytes,
            replay_timeout_s=s.replay_timeout_seconds, resync_on_reconnect=s.resync_on_reconnect,
        )

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            self._ctx = zmq.asyncio.Context()
            # Linger 0 on every socket (monitor pairs included): a manager that is never
            # stopped must not block interpreter exit in Context.term() on unsent messages.
            self._ctx.setsockopt(zmq.LINGER, 0)
            self._started = True
            if self.settings.zmq_endpoint:
                self.central = CentralSubscriber(
                    self.settings.zmq_endpoint, self.index, self._ctx, self._resolve_hostport,
                    settings=self.socket_settings(), checker=self.checker, lora_names=self.lora_names,
                    hybrid_keys=self.hybrid_keys,
                )
                self.central.start()
            if self.settings.discover_pods:
                for ep in self.datastore.endpoints():
                    self._ensure(ep)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for sub in list(self.subscribers.values()):
            await sub.stop()
        self.subscribers.clear()
        self._dp_size.clear()
        self._dp_pods.clear()
        if self.central is not None:
            await self.central.stop()
            self.central = None
        for task in list(self._background):
            await asyncio.gather(task, return_exceptions=True)
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None

    # --- queries (hot path) ---------------------------------------------------------------
    def local_stream(self, pod: str) -> KVEventStream:
        """A stream for events delivered in-process (`await stream.handle(seq, payload)`)."""
        stream = self.local_streams.get(pod)
        if stream is None:
            stream = self.local_streams[pod] = KVEventStream(pod, self.index, checker=self.checker,
                                                             lora_names=self.lora_names,
                                                             hybrid_keys=self.hybrid_keys)
        return stream

    def stream(self, pod: str) -> KVEventStream | None:
        sub = self.subscribers.get(pod)
        if sub is not None:
            return sub.stream
        local = self.local_streams.get(pod)
        if local is not None:
            return local
        if self.central is not None:
            return self.central.streams.get(pod)
        return None

    def has_events(self, pod: str) -> bool:
        """True if the pod's view comes from its events (and is not being recovered); for a
        data-parallel pod, if any of its ranks' views does."""
        stream = self.stream(pod)
        if stream is not None and stream.has_events:
            return True
        size = self._dp_size.get(pod, 1)
        for rank in range(1, size):
            sub = self.subscribers.get(rank_key(pod, rank))
            if sub is not None and sub.stream.has_events:
                return True
        return False

    @property
    def has_data_parallel_pods(self) -> bool:
        """True if some pod runs several data-parallel ranks (lookups must then merge keys)."""
        return bool(self._dp_pods)

    def group_specs(self, key: str) -> dict[int, GroupSpec]:
        """The KV-cache groups learned from the events of an index key (pod or rank)."""
        sub = self.subscribers.get(key)
        stream = sub.stream if sub is not None else self.stream(key)
        return stream.groups if stream is not None else {}

    def index_keys(self, pod: str) -> list[str]:
        """The index keys holding the pod's blocks: the pod, plus one per data-parallel rank
        above 0. vLLM's API server hands a request to one rank, so a pod's match is the best
        of its ranks' matches."""
        size = self._dp_size.get(pod, 1)
        return [pod] if size == 1 else [rank_key(pod, r) for r in range(size)]

    def all_stats(self) -> Iterator[tuple[str, SubscriberStats]]:
        for pod, sub in self.subscribers.items():
            yield pod, sub.stats
        for pod, stream in self.local_streams.items():
            if pod not in self.subscribers:
                yield pod, stream.stats
        if self.central is not None:
            for pod, stream in self.central.streams.items():
                if pod not in self.subscribers:
                    yield pod, stream.stats

    # --- datastore events -----------------------------------------------------------------
    def endpoints_for(self, ep: Endpoint, rank: int = 0) -> tuple[str, str | None]:
        """The publisher and replay endpoints (None without replay) of one data-parallel rank
        of the pod: vLLM offsets both ports by the rank (ZmqEventPublisher.offset_endpoint_port)."""
        s = self.settings
        port = self._port_from_label(ep, s.socket_port_label, s.socket_port) + rank
        replay_port = self._port_from_label(ep, s.replay_port_label, s.replay_port)
        replay_port = replay_port + rank if replay_port else 0
        endpoint = format_endpoint(s.endpoint_template, ep, port, replay_port)
        replay = (format_endpoint(s.replay_endpoint_template, ep, port, replay_port)
                  if replay_port else None)
        return endpoint, replay

    def data_parallel_size(self, ep: Endpoint) -> int:
        s = self.settings
        value = ep.labels.get(s.data_parallel_size_label) if s.data_parallel_size_label else None
        if value is None:
            return s.data_parallel_size
        if value.isdigit() and 1 <= int(value) <= MAX_DATA_PARALLEL_SIZE:
            return int(value)
        log.warning("kv-events %s: label %s=%r is not a data-parallel size; using %d", ep.key,
                    s.data_parallel_size_label, value, s.data_parallel_size)
        return s.data_parallel_size

    @staticmethod
    def _port_from_label(ep: Endpoint, label: str, default: int) -> int:
        value = ep.labels.get(label) if label else None
        if value is None:
            return default
        if value.isdigit() and 0 < int(value) < 65536:
            return int(value)
        log.warning("kv-events %s: label %s=%r is not a port; using %d", ep.key, label, value, default)
        return default

    def _on_endpoint(self, event: str, ep: Endpoint) -> None:
        if event == "removed":
            self.local_streams.pop(ep.key, None)
            if self.checker is not None:
                self.checker.forget_pod(ep.key)
        if not self._started:
            return
        if event == "removed":
            size = self._dp_size.pop(ep.key, 1)
            self._dp_pods.discard(ep.key)
            central = self.central.streams.get(ep.key) if self.central is not None else None
            for rank in range(size):
                key = rank_key(ep.key, rank)
                self._spawn(self._retire(key, self.subscribers.pop(key, None),
                                         list(central.groups) if central is not None and rank == 0 else []))
            if self.central is not None:
                self.central.forget(ep.key)
        elif self.settings.discover_pods:
            self._ensure(ep)

    def _ensure(self, ep: Endpoint) -> None:
        assert self._ctx is not None
        size = self.data_parallel_size(ep)
        old_size = self._dp_size.get(ep.key, size)
        for rank in range(size, old_size):  # the pod runs fewer ranks now
            key = rank_key(ep.key, rank)
            self._spawn(self._retire(key, self.subscribers.pop(key, None)))
        self._dp_size[ep.key] = size
        if size > 1:
            self._dp_pods.add(ep.key)
        else:
            self._dp_pods.discard(ep.key)
        for rank in range(size):
            key = rank_key(ep.key, rank)
            endpoint, replay = self.endpoints_for(ep, rank)
            current = self.subscribers.get(key)
            if current is not None:
                if current.endpoint == endpoint and current.replay_endpoint == replay:
                    continue
                # The pod moved (new IP or event port): its old view is worthless.
                self.subscribers.pop(key)
                self._spawn(self._retire(key, current))
            sub = PodSubscriber(key, endpoint, self.index, self._ctx, replay_endpoint=replay,
                                settings=self.socket_settings(), checker=self.checker, rank=rank,
                                lora_names=self.lora_names, hybrid_keys=self.hybrid_keys)
            self.subscribers[key] = sub
            sub.start()

    async def _retire(self, pod: str, sub: PodSubscriber | None, groups: list[int] | None = None) -> None:
        """Stop a pod's (rank's) subscriber and drop its blocks, in every KV-cache group."""
        groups = [*(groups or []), *(sub.stream.groups if sub is not None else [])]
        if sub is not None:
            await sub.stop()
        self.hybrid_keys.discard(pod)
        try:
            await self.index.clear_pod(pod)
            for group in groups:
                if group:
                    await self.index.clear_pod(group_key(pod, group))
        except Exception as e:
            log.warning("kv-events %s: clearing the removed pod's entries failed: %s", pod, e)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _resolve_hostport(self, hostport: str) -> str | None:
        ep = self.datastore.by_hostport(hostport)
        return ep.key if ep is not None else None
