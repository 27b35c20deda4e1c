"""ZMQ publisher of KV events, wire-compatible with vLLM's ZmqEventPublisher.

PUB socket sends [topic, seq (8-byte big-endian), msgpack EventBatch]. Like vLLM it binds
when the endpoint contains '*' or '::' or is ipc:// / inproc://, and connects otherwise
(llm-d's indexer binds one SUB socket that all pods connect to); `bind` overrides the rule.
An optional ROUTER replay socket answers [b"", start_seq] with every buffered batch from
start_seq on, then the end marker seq -1 with an empty payload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import zmq
import zmq.asyncio

from epp.aio import cancel_and_wait
from epp.prefixcache.events import END_OF_REPLAY_SEQ, KVEvent, KVEventBatch, encode_event_batch, encode_seq

log = logging.getLogger(__name__)

REPLAY_BUFFER_BATCHES = 10_000
PUB_HWM = 100_000


def vllm_would_bind(endpoint: str) -> bool:
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class KVEventPublisher:
    def __init__(
        self,
        endpoint: str,
        topic: str = "",
        bind: bool | None = None,
        replay_endpoint: str | None = None,
        data_parallel_rank: int | None = 0,
        context: zmq.asyncio.Context | None = None,
        event_format: str = "map",
    ) -> None:
        self.endpoint = endpoint
        self.event_format = event_format
        self.topic = topic.encode("utf-8")
        self.data_parallel_rank = data_parallel_rank
        self._ctx = context or zmq.asyncio.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.set_hwm(PUB_HWM)
        self._pub.setsockopt(zmq.LINGER, 0)
        if vllm_would_bind(endpoint) if bind is None else bind:
            self._pub.bind(endpoint)
        else:
            self._pub.connect(endpoint)
        self._seq = 0
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=REPLAY_BUFFER_BATCHES)
        self._replay: zmq.asyncio.Socket | None = None
        self._replay_task: asyncio.Task[None] | None = None
        if replay_endpoint:
            self._replay = self._ctx.socket(zmq.ROUTER)
            self._replay.setsockopt(zmq.LINGER, 0)
            self._replay.bind(replay_endpoint)
            self._replay_task = asyncio.get_running_loop().create_task(self._serve_replay())
        self.batches_sent = 0

    @property
    def next_seq(self) -> int:
        return self._seq

    def publish(self, events: list[KVEvent]) -> None:
        """Send one batch now (PUB never blocks; at the HWM zmq drops, like vLLM)."""
        if not events:
            return
        payload = encode_event_batch(
            KVEventBatch(ts=time.time(), events=events, data_parallel_rank=self.data_parallel_rank),
            self.event_format,
        )
        seq = self._seq
        self._seq += 1
        self._buffer.append((seq, payload))
        try:
            self._pub.send_multipart((self.topic, encode_seq(seq), payload), flags=zmq.NOBLOCK)
            self.batches_sent += 1
        except zmq.Again:
            log.warning("KV event batch %d dropped: publisher queue full", seq)

    async def _serve_replay(self) -> None:
        assert self._replay is not None
        while True:
            frames = await self._replay.recv_multipart()
            if len(frames) != 3:
                log.warning("invalid KV event replay request with %d frames", len(frames))
                continue
            client_id, _, start = frames
            start_seq = int.from_bytes(start, "big")
            for seq, payload in list(self._buffer):
                if seq >= start_seq:
                    await self._replay.send_multipart((client_id, b"", encode_seq(seq), payload))
            await self._replay.send_multipart((client_id, b"", END_OF_REPLAY_SEQ, b""))

    async def close(self) -> None:
        task, self._replay_task = self._replay_task, None
        await cancel_and_wait(task)
        if self._replay is not None:
            self._replay.close(linger=0)
        self._pub.close(linger=0)
