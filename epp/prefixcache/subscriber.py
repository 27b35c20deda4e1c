"""ZMQ subscribers that follow vLLM KV events and keep the KV-block index current.

Wire protocol (vllm/distributed/kv_events.py, ZmqEventPublisher): a PUB socket sends
multipart `[topic, seq (8-byte big-endian), payload (msgpack EventBatch)]`, `seq` counting
from 0 per publisher process. An optional ROUTER "replay" socket answers a request
`[b"", start_seq]` with `[b"", seq, payload]` for each buffered batch >= start_seq and ends
with `[b"", -1 (8-byte signed), b""]`. We talk to it with a DEALER socket (a REQ socket
would drop every reply after the first).

Per pod (`PodSubscriber`, the pod binds, we connect), sequence numbers are tracked:
- a jump forward (`seq > last + 1`) is a gap: counted, the pod's view is marked stale, then
  recovered from the replay socket if configured, else resynchronised by clearing the pod's
  entries (an empty view under-estimates, which is safe; a view missing removals would
  over-estimate and send requests to pods that no longer hold the prefix);
- a step back (`seq <= last`) means the publisher restarted (its cache is empty): clear;
- a TCP reconnect (socket monitor) also clears the pod's view and restarts sequencing, since
  a restarted pod reuses its address;
- the first batch seen with seq > 0 triggers a replay from 0 when a replay socket exists, so
  an EPP that starts after the pods learns what they cached before.
Frames that are not 3 parts, have a bad sequence frame, or a payload that does not decode are
counted and dropped; nothing a pod sends can stop the loop. Memory stays bounded: the SUB
socket has a receive high-water mark and a max message size, replays are capped.

Hashes are folded to 64 bits before they reach the index (`fold_hash`), so int- and
bytes-publishing pods index alike. Hybrid models (sliding window, Mamba) publish one
BlockStored / BlockRemoved per KV-cache group with `group_idx` (and the group's
`kv_cache_spec_kind` on stores): each group > 0 gets its own index key (`group_key`), so a
sliding-window group dropping a block does not erase the full-attention group's copy, and the
scorer can apply vLLM's hybrid hit rule per group (`GroupSpec`). A data-parallel rank r > 0 of a pod is
its own stream with index key `rank_key(pod, r)`; batches carry `data_parallel_rank`, which
is checked against the rank the stream was opened for.

`CentralSubscriber` is llm-d's centralized mode: the EPP binds one SUB socket, every pod
connects its publisher to it and names itself in the topic `kv@<pod-ip>:<port>@<model>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from epp.aio import cancel_and_wait
from epp.prefixcache.block_hash import fold_hash
from epp.prefixcache.events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch, decode_event_batch
from epp.prefixcache.hash_check import HashSettingsChecker
from epp.prefixcache.index import KVBlockIndex

log = logging.getLogger(__name__)

END_OF_REPLAY = -1


MAX_LORA_NAMES = 10_000  # bounds the adapter names remembered from events


def rank_key(pod: str, rank: int) -> str:
    """The index key of a pod's data-parallel rank (rank 0 is the pod itself)."""
    return pod if rank == 0 else f"{pod}#dp{rank}"


def group_key(key: str, group_idx: int | None) -> str:
    """The index key of one KV-cache group of a pod (rank); group 0 is the pod itself."""
    return key if not group_idx else f"{key}/g{group_idx}"


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A KV-cache group as its BlockStored events describe it (vLLM KVCacheSpecKind)."""

    kind: str | None  # e.g. "full_attention", "sliding_window", "mamba"; None: not published
    sliding_window: int | None  # tokens, for sliding-window groups
    block_size: int


@dataclass(slots=True)
class SubscriberStats:
    """Counters of one pod's event stream (exported as metrics, shown in debug output)."""

    messages: int = 0
    batches: int = 0
    events: int = 0
    blocks_stored: int = 0
    blocks_removed: int = 0
    all_cleared: int = 0
    malformed_frames: int = 0  # wrong frame count or sequence frame
    decode_errors: int = 0  # payload is not a KV event batch
    rank_mismatches: int = 0  # batches whose data_parallel_rank is not the stream's rank
    apply_errors: int = 0  # the index refused an update (e.g. Redis down)
    gaps: int = 0
    missed_batches: int = 0
    replays: int = 0
    replayed_batches: int = 0
    resyncs: int = 0  # pod view cleared to recover from lost or unknown history
    publisher_restarts: int = 0
    reconnects: int = 0
    last_seq: int = -1
    stale: bool = False
    connected: bool = False
    last_message_at: float = 0.0  # time.monotonic()


ReplayFn = Callable[[int, int], Awaitable[list[tuple[int, bytes]]]]


class KVEventStream:
    """Applies one publisher's messages to the index: sequencing, gaps, decoding.

    Socket-free so that the protocol logic is testable with plain byte frames.
    `replay(start, end)` returns buffered (seq, payload) pairs from `start` (up to `end`),
    or None when the publisher has no replay socket.
    """

    def __init__(
        self,
        pod: str,
        index: KVBlockIndex,
        *,
        replay: ReplayFn | None = None,
        checker: HashSettingsChecker | None = None,
        rank: int = 0,
        lora_names: set[str] | None = None,
        hybrid_keys: set[str] | None = None,
    ) -> None:
        self.pod = pod
        self.index = index
        self.replay = replay
        self.checker = checker
        self.rank = rank
        # KV-cache groups seen in this pod's events; more than group 0 = a hybrid model, whose
        # key then joins `hybrid_keys` (shared with the scorer).
        self.groups: dict[int, GroupSpec] = {}
        self.hybrid_keys = hybrid_keys
        # Shared with the scorer: adapter names seen in BlockStored (lora_name), which make a
        # request for that model a LoRA request even while the adapter is idle.
        self.lora_names = lora_names
        self.stats = SubscriberStats()

    @property
    def has_events(self) -> bool:
        """True once at least one valid batch was applied and the view is not stale."""
        return self.stats.batches > 0 and not self.stats.stale

    async def handle_frames(self, frames: list[bytes]) -> None:
        stats = self.stats
        stats.messages += 1
        stats.last_message_at = time.monotonic()
        if len(frames) != 3 or len(frames[1]) != 8:
            stats.malformed_frames += 1
            return
        seq = int.from_bytes(frames[1], "big")
        await self.handle(seq, frames[2])

    async def handle(self, seq: int, payload: bytes) -> None:
        stats = self.stats
        last = stats.last_seq
        if last >= 0 and seq <= last:
            stats.publisher_restarts += 1
            log.info("kv-events %s: sequence went back %d -> %d (publisher restarted); clearing "
                     "the pod's view", self.pod, last, seq)
            await self._resync("publisher restart")
            last = -1
        if seq > last + 1:
            if last >= 0:
                stats.gaps += 1
                stats.missed_batches += seq - last - 1
                log.warning("kv-events %s: sequence gap, missed %d batch(es) (%d -> %d)",
                            self.pod, seq - last - 1, last, seq)
            await self._recover(last + 1, seq, initial=last < 0)
        stats.last_seq = seq
        try:
            batch = decode_event_batch(payload)
        except Exception as e:  # any decoder failure is the pod's garbage, never ours to die of
            stats.decode_errors += 1
            if stats.decode_errors <= 3 or stats.decode_errors % 1000 == 0:
                log.warning("kv-events %s: dropped undecodable payload seq=%d (%d so far): %s",
                            self.pod, seq, stats.decode_errors, e)
            return
        await self._apply(batch)

    async def _recover(self, start: int, end: int, *, initial: bool) -> None:
        """Fill batches [start, end) from the replay socket, else clear the pod's view."""
        stats = self.stats
        if self.replay is not None:
            stats.stale = True
            stats.replays += 1
            try:
                frames = await self.replay(start, end)
            except Exception as e:
                log.warning("kv-events %s: replay from %d failed: %s", self.pod, start, e)
                frames = []
            expected = start
            # A replay that starts after `start` (buffer rolled over) leaves history unknown.
            complete = bool(frames) and frames[0][0] <= start
            for seq, payload in frames:
                if seq < expected:
                    continue
                if seq >= end:
                    break
                if seq != expected:
                    complete = False
                    break
                try:
                    batch = decode_event_batch(payload)
                except Exception:
                    stats.decode_errors += 1
                    complete = False
                    break
                await self._apply(batch)
                stats.replayed_batches += 1
                expected += 1
            if complete and expected == end:
                stats.stale = False
                return
            if initial and not frames:
                stats.stale = False  # nothing to learn: start from an empty view
                return
        if initial:
            return  # no earlier view to correct: an empty view under-estimates, which is safe
        await self._resync("sequence gap")

    def _learn_group(self, group: int, event: BlockStored) -> None:
        spec = GroupSpec(event.kv_cache_spec_kind, event.kv_cache_spec_sliding_window, event.block_size)
        if self.groups.get(group) != spec:
            self.groups[group] = spec
            if group and self.hybrid_keys is not None:
                self.hybrid_keys.add(self.pod)

    async def _clear_index(self) -> None:
        """Drop the pod's blocks from the index, in every KV-cache group."""
        await self.index.clear_pod(self.pod)
        for group in self.groups:
            if group:
                await self.index.clear_pod(group_key(self.pod, group))

    async def _resync(self, reason: str) -> None:
        self.stats.resyncs += 1
        self.stats.stale = True
        try:
            await self._clear_index()
        except Exception as e:
            self.stats.apply_errors += 1
            log.error("kv-events %s: clearing the pod's view after %s failed: %s", self.pod, reason, e)
            return
        self.stats.stale = False

    async def reset(self, reason: str) -> None:
        """Forget the pod's view and sequence (reconnect, pod restart)."""
        await self._resync(reason)
        self.stats.last_seq = -1

    async def _apply(self, batch: KVEventBatch) -> None:
        stats = self.stats
        stats.batches += 1
        pod = self.pod
        index = self.index
        rank = batch.data_parallel_rank
        if rank is not None and rank != self.rank:
            stats.rank_mismatches += 1
            if stats.rank_mismatches == 1:
                log.warning("kv-events %s: batch from data-parallel rank %d on the stream of rank %d; "
                            "check kvEventsConfig.dataParallelSize and the pod's ports", pod, rank, self.rank)
        for event in batch.events:
            stats.events += 1
            try:
                if isinstance(event, BlockStored):
                    group = event.group_idx or 0
                    if group or event.kv_cache_spec_kind is not None:
                        self._learn_group(group, event)
                    await index.add(group_key(pod, group), [fold_hash(h) for h in event.block_hashes],
                                    event.medium)
                    stats.blocks_stored += len(event.block_hashes)
                    if event.lora_name and self.lora_names is not None and len(self.lora_names) < MAX_LORA_NAMES:
                        self.lora_names.add(event.lora_name)
                    if self.checker is not None:
                        self.checker.check_stored(pod, event)
                elif isinstance(event, BlockRemoved):
                    await index.remove(group_key(pod, event.group_idx), [fold_hash(h) for h in event.block_hashes],
                                       event.medium)
                    stats.blocks_removed += len(event.block_hashes)
                elif isinstance(event, AllBlocksCleared):
                    await self._clear_index()
                    stats.all_cleared += 1
            except (TypeError, ValueError) as e:
                # Well-formed msgpack with values the index cannot hold (e.g. unhashable).
                stats.decode_errors += 1
                log.debug("kv-events %s: dropped event %r: %s", pod, event, e)
            except Exception as e:
                stats.apply_errors += 1
                log.warning("kv-events %s: applying %s failed: %s", pod, type(event).__name__, e)


@dataclass(slots=True)
class SocketSettings:
    topic_filter: str = ""
    rcv_hwm: int = 10_000  # messages queued per pod before ZMQ drops (a gap we detect)
    max_message_bytes: int = 64 * 1024 * 1024  # bigger messages disconnect the peer
    replay_timeout_s: float = 2.0
    max_replay_batches: int = 100_000
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 5_000
    resync_on_reconnect: bool = True


class PodSubscriber:
    """One SUB socket connected to one pod's publisher, feeding a `KVEventStream`."""

    def __init__(
        self,
        pod: str,
        endpoint: str,
        index: KVBlockIndex,
        context: zmq.asyncio.Context,
        *,
        replay_endpoint: str | None = None,
        settings: SocketSettings | None = None,
        checker: HashSettingsChecker | None = None,
        rank: int = 0,
        lora_names: set[str] | None = None,
        hybrid_keys: set[str] | None = None,
    ) -> None:
        self.pod = pod
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint or None
        self.settings = settings or SocketSettings()
        self._ctx = context
        self.stream = KVEventStream(
            pod, index, replay=self._replay if self.replay_endpoint else None, checker=checker,
            rank=rank, lora_names=lora_names, hybrid_keys=hybrid_keys,
        )
        self._task: asyncio.Task[None] | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self._sub: zmq.asyncio.Socket | None = None
        self._ever_connected = False
        self._reset_pending = False

    @property
    def stats(self) -> SubscriberStats:
        return self.stream.stats

    def start(self) -> None:
        if self._task is not None:
            return
        sub = self._ctx.socket(zmq.SUB)
        s = self.settings
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, s.rcv_hwm)
        sub.setsockopt(zmq.MAXMSGSIZE, s.max_message_bytes)
        sub.setsockopt(zmq.RECONNECT_IVL, s.reconnect_ivl_ms)
        sub.setsockopt(zmq.RECONNECT_IVL_MAX, s.reconnect_ivl_max_ms)
        sub.setsockopt(zmq.SUBSCRIBE, s.topic_filter.encode())
        monitor = sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sub.connect(self.endpoint)
        self._sub = sub
        self._monitor_task = asyncio.create_task(self._watch(monitor), name=f"kv-events-monitor {self.pod}")
        self._task = asyncio.create_task(self._run(sub), name=f"kv-events {self.pod}")
        log.info("kv-events %s: subscribed to %s (replay: %s)", self.pod, self.endpoint,
                 self.replay_endpoint or "none")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._monitor_task) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._task = self._monitor_task = None
        if self._sub is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sub.disable_monitor()
            self._sub.close(linger=0)
            self._sub = None

    async def _run(self, sub: zmq.asyncio.Socket) -> None:
        stream = self.stream
        while True:
            try:
                frames = await sub.recv_multipart()
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as e:
                if e.errno == zmq.ETERM:
                    return
                log.warning("kv-events %s: receive failed: %s", self.pod, e)
                await asyncio.sleep(0.1)
                continue
            if self._reset_pending:
                self._reset_pending = False
                await stream.reset("reconnect")
            try:
                await stream.handle_frames(frames)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug of ours must not end the subscription either
                stream.stats.decode_errors += 1
                log.exception("kv-events %s: unexpected error handling a message", self.pod)

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        stats = self.stream.stats
        try:
            while True:
                msg = parse_monitor_message(await monitor.recv_multipart())
                event = msg["event"]
                if event == zmq.EVENT_CONNECTED:
                    stats.connected = True
                    if self._ever_connected:
                        stats.reconnects += 1
                        if self.settings.resync_on_reconnect:
                            # Applied before the next message so it cannot race the stream.
                            self._reset_pending = True
                    self._ever_connected = True
                elif event == zmq.EVENT_DISCONNECTED:
                    stats.connected = False
        except (zmq.ZMQError, asyncio.CancelledError):
            pass
        finally:
            monitor.close(linger=0)

    async def _replay(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """Ask the pod's replay socket for batches from `start`; stops at end-of-replay,
        at `end`, at the cap, or at the timeout."""
        assert self.replay_endpoint is not None
        s = self.settings
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.MAXMSGSIZE, s.max_message_bytes)
        out: list[tuple[int, bytes]] = []
        try:
            dealer.connect(self.replay_endpoint)
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            deadline = time.monotonic() + s.replay_timeout_s
            while len(out) < s.max_replay_batches:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    frames = await asyncio.wait_for(dealer.recv_multipart(), remaining)
                except TimeoutError:
                    break
                if len(frames) != 3 or len(frames[1]) != 8:
                    self.stream.stats.malformed_frames += 1
                    continue
                seq = int.from_bytes(frames[1], "big", signed=True)
                if seq == END_OF_REPLAY or not frames[2]:
                    break
                out.append((seq, frames[2]))
                if seq >= end - 1:
                    break
        finally:
            dealer.close(linger=0)
        return out


def parse_llmd_topic(topic: bytes) -> str | None:
    """`kv@<pod-ip>:<port>@<model>` -> "<pod-ip>:<port>" (IPv6 as "[addr]:port"), else None."""
    try:
        text = topic.decode("utf-8")
    except UnicodeDecodeError:
        return None
    parts = text.split("@")
    if len(parts) < 2 or parts[0] != "kv" or not parts[1]:
        return None
    hostport = parts[1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class CentralSubscriber:
    """One bound SUB socket receiving every pod's events (pods connect their publishers).

    The pod is identified from the topic (`kv@<pod-ip>:<port>@<model>`) through `resolve`
    (hostport -> pod key, or None for unknown pods, whose messages are counted and dropped).
    Each pod keeps its own sequence tracking; there is no replay in this mode (the replay
    socket is on the pod and pods are not known by address here), so gaps resynchronise.
    """

    def __init__(
        self,
        bind_endpoint: str,
        index: KVBlockIndex,
        context: zmq.asyncio.Context,
        resolve: Callable[[str], str | None],
        *,
        settings: SocketSettings | None = None,
        checker: HashSettingsChecker | None = None,
        max_streams: int = 4096,
        lora_names: set[str] | None = None,
        hybrid_keys: set[str] | None = None,
    ) -> None:
        self.bind_endpoint = bind_endpoint
        self.index = index
        self.settings = settings or SocketSettings(topic_filter="kv@")
        self.checker = checker
        self.lora_names = lora_names
        self.hybrid_keys = hybrid_keys
        self.resolve = resolve
        self.max_streams = max_streams
        self.streams: dict[str, KVEventStream] = {}
        self.unknown_topic_messages = 0
        self._ctx = context
        self._sub: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None:
            return
        s = self.settings
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, s.rcv_hwm)
        sub.setsockopt(zmq.MAXMSGSIZE, s.max_message_bytes)
        sub.setsockopt(zmq.SUBSCRIBE, s.topic_filter.encode())
        sub.bind(self.bind_endpoint)
        self._sub = sub
        self._task = asyncio.create_task(self._run(sub), name="kv-events central")
        log.info("kv-events: listening for pod publishers on %s", self.bind_endpoint)

    def bound_endpoint(self) -> str:
        """The actual endpoint (resolves a port 0 / wildcard bind)."""
        assert self._sub is not None
        return str(self._sub.getsockopt_string(zmq.LAST_ENDPOINT))

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._sub is not None:
            self._sub.close(linger=0)
            self._sub = None

    def forget(self, pod: str) -> None:
        self.streams.pop(pod, None)

    def stream_for(self, pod: str) -> KVEventStream:
        stream = self.streams.get(pod)
        if stream is None:
            if len(self.streams) >= self.max_streams:
                self.streams.pop(next(iter(self.streams)))
            stream = KVEventStream(pod, self.index, checker=self.checker, lora_names=self.lora_names,
                                   hybrid_keys=self.hybrid_keys)
            self.streams[pod] = stream
        return stream

    async def handle_frames(self, frames: list[bytes]) -> None:
        hostport = parse_llmd_topic(frames[0]) if frames else None
        pod = self.resolve(hostport) if hostport is not None else None
        if pod is None:
            self.unknown_topic_messages += 1
            return
        await self.stream_for(pod).handle_frames(frames)

    async def _run(self, sub: zmq.asyncio.Socket) -> None:
        while True:
            try:
                frames = await sub.recv_multipart()
                await self.handle_frames(frames)
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as e:
                if e.errno == zmq.ETERM:
                    return
                log.warning("kv-events central: receive failed: %s", e)
                await asyncio.sleep(0.1)
            except Exception:
                log.exception("kv-events central: unexpected error handling a message")
