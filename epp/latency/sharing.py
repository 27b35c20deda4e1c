"""The latency runtime's requests, shared between the EPP workers of one host.

With `epp serve --workers N` each worker decides alone. Its virtual prefill queue per pod
(epp/latency/runtime.py) must hold every worker's requests, or a worker reads a pod busy
with another worker's long prefill as free: measured with two workers before this existed,
the long prefills lost their advantage over the default config (1.02-1.07x against
1.37-1.51x) and the fast pods' TTFT MAPE read 77-90% (docs/latency-routing.md).

So each worker tells the others, over the PeerBus of epp/server/peers.py, of each of its
requests three times:
- `latency.dispatch`: its pod, new prompt and decode k tokens, SLO, features, stall budget
  and the monotonic time it was sent (CLOCK_MONOTONIC is one clock for the whole host);
- `latency.first-byte`: when its response headers came, and their status;
- `latency.complete`: when its stream ended, its completion tokens and status.
Every receiver queues it, times engine steps from its first byte, and learns its TTFT and
TPOT, as if it were its own; only its metrics stay with the worker that sent it.

A message lost (a peer not up yet, or its queue full for longer than the bus's backlog lasts)
costs precision, never correctness: an event of an unknown request is ignored; a request
whose later events are lost stays charged until its stream end is heard or it expires
(RECORD_TTL_S). A worker that restarts starts a new generation:
the receivers drop the requests of its old one, whose events will never come.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

from epp.latency.runtime import LatencyRuntime, RequestRecord
from epp.latency.slo import SLO
from epp.scheduling.types import LLMRequest

log = logging.getLogger(__name__)

DISPATCH = "latency.dispatch"
FIRST_BYTE = "latency.first-byte"
COMPLETE = "latency.complete"


class LatencySharing:
    """Publishes this worker's requests to the latency runtimes of the other workers and
    feeds theirs into its own. `bus` is an epp.server.peers.PeerBus (publish, subscribe,
    worker_id)."""

    def __init__(self, bus: Any, runtime: LatencyRuntime) -> None:
        self.bus = bus
        self.runtime = runtime
        # Tells the receivers that this is a new process, not the old one's requests.
        self.generation = random.getrandbits(31)
        self._peer_generation: dict[int, int] = {}
        self.rejected = 0  # messages not understood (a peer of another version)
        bus.subscribe(DISPATCH, self._on_dispatch)
        bus.subscribe(FIRST_BYTE, self._on_first_byte)
        bus.subscribe(COMPLETE, self._on_complete)

    @classmethod
    def attach(cls, bus: Any, runtime: LatencyRuntime) -> LatencySharing:
        """The runtime's sharing over `bus`, created on first use (a config reload keeps it)."""
        sharing = runtime.peers
        if sharing is None or sharing.bus is not bus:
            sharing = runtime.peers = cls(bus, runtime)
        return sharing

    # --- publishing (this worker's requests) -----------------------------------------------
    def dispatched(self, record: RequestRecord) -> None:
        slo = record.slo
        self.bus.publish(DISPATCH, (
            self.generation, record.seq, record.pod, record.model, record.target_model,
            record.request.stream, slo.ttft_s, slo.tpot_s, record.features, record.new_tokens,
            record.decode_tokens, record.dispatched, record.stall_budget, record.deferred))

    def first_byte(self, record: RequestRecord, status: int) -> None:
        self.bus.publish(FIRST_BYTE, (self.generation, record.seq, record.first_byte, status))

    def completed(self, record: RequestRecord, at: float, tokens: int | None, status: object) -> None:
        self.bus.publish(COMPLETE, (self.generation, record.seq, at, tokens,
                                    status if isinstance(status, int) else None))

    # --- receiving (the other workers') -------------------------------------------------------
    def _adopt(self, worker: int, generation: int) -> None:
        """Take `generation` as the peer's current one. A new one drops the requests of the
        old (the peer restarted: their events will never come)."""
        known = self._peer_generation.get(worker)
        if known != generation:
            self._peer_generation[worker] = generation
            if known is not None:
                dropped = self.runtime.forget_peer(worker)
                log.info("latency sharing: worker %d restarted; dropped %d of its requests", worker, dropped)

    def _on_dispatch(self, worker: int, payload: Any) -> None:
        try:
            (generation, seq, pod, model, target_model, stream, ttft_s, tpot_s, features, new_tokens,
             decode_tokens, dispatched, stall_budget, deferred) = payload
            slo = SLO(None if ttft_s is None else float(ttft_s), None if tpot_s is None else float(tpot_s))
            x = [float(v) for v in features]
            request = LLMRequest(request_id=f"worker-{worker}/{seq}", model=str(model),
                                 target_model=str(target_model), stream=bool(stream))
            record = RequestRecord(request, str(pod), str(model), str(target_model), slo, x, math.nan, math.nan,
                                   float(new_tokens), float(decode_tokens), float(dispatched),
                                   stall_budget=float(stall_budget), origin=int(worker), seq=int(seq),
                                   deferred=bool(deferred))
        except (TypeError, ValueError) as e:
            self._reject(worker, DISPATCH, e)
            return
        self._adopt(worker, int(generation))
        self.runtime.on_peer_dispatch(record)

    def _on_first_byte(self, worker: int, payload: Any) -> None:
        try:
            generation, seq, at, status = payload
            at, status = float(at), int(status)
        except (TypeError, ValueError) as e:
            self._reject(worker, FIRST_BYTE, e)
            return
        if self._peer_generation.get(worker) == generation:
            self.runtime.on_peer_first_byte(worker, int(seq), at, status)

    def _on_complete(self, worker: int, payload: Any) -> None:
        try:
            generation, seq, at, tokens, status = payload
            at = float(at)
            tokens = tokens if isinstance(tokens, int) else None
        except (TypeError, ValueError) as e:
            self._reject(worker, COMPLETE, e)
            return
        if self._peer_generation.get(worker) == generation:
            self.runtime.on_peer_complete(worker, int(seq), at, tokens, status)

    def _reject(self, worker: int, topic: str, error: Exception) -> None:
        self.rejected += 1
        if self.rejected == 1 or self.rejected % 1000 == 0:
            log.warning("latency sharing: %d messages from peers not understood; last from worker %d "
                        "on %s: %s", self.rejected, worker, topic, error)
