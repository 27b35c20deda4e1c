"""prefill-load-scorer: prefer endpoints that were sent the fewest prompt tokens lately.

Time to first token is decided by the prefills a pod is running when a request arrives, not
by how many requests it is decoding: a pod that took a 2k-token prompt 50 ms ago is still
prefilling it, while a pod holding five requests in decode can start a prefill at once.
Request counts (active-request-scorer, Envoy's least_request) therefore send a new request
to the pod whose old request just finished, even if it was handed a fresh prompt a moment
ago; on homogeneous traffic that collides prefills and loses to plain round robin.

The EPP does not see first tokens (responses do not pass through it), so the ledger
(epp.datastore.inflight) keeps, per endpoint, the prompt tokens it dispatched there with
each prompt's weight fading as exp(-age / window) (`epp serve --prefill-window`, 0.5 s),
this worker's plus what the other workers last reported. Scores are min-max normalised like
queue-scorer: the endpoint with the smallest recent prompt load scores 1, the largest 0. On
equal prompts this picks the pod that was sent a request least recently (round robin's
spacing); on mixed prompts it weighs them by size.

The ledger only knows this EPP's requests. Requests waiting in a pod's queue have not been
prefilled either, whoever sent them, so the load is max(ledger estimate, scraped waiting
requests x this request's prompt tokens): a pod that other EPP replicas or direct clients
have queued up looks busy too, and our own waiting requests are not counted twice.

`speedAware` (false by default; the embedded default config turns it on) makes the load
speed-aware for pools that mix GPU types. Prompt tokens sent are speed-blind: a pod 2x slower
takes as many prompts as the others, falls behind and queues, while the faster pods idle
between their prompts. With speedAware each endpoint's load (and the prompt this request
would add to it) is multiplied by the slowness the ledger learned from how long that pod
keeps requests in flight (InflightTracker.slowness: 1.0 on a homogeneous pool, where the
scores are exactly those without it). Equalising slowness x prompt tokens sends a pod 2x
slower half the prompts, and the request's own prompt counts too, so an idle slow pod is
only picked once the fast ones hold more than one prompt's worth of recent load.
`engineLatency` (false) lets the ledger also learn slowness from the pods' scraped
inter-token latency, which tells within a second of a pod's first request instead of at its
first completions; pods that do not export it are judged by completions alone. Off by
default: on a homogeneous pool under load, a pod that has just taken prompts decodes in
steps shared with their prefill chunks, so its inter-token latency reads as slowness and
shifts load for no reason (no-sharing @ 9-12 req/s: p50 up to 1.47x the completions-only
ranking in side-by-side runs, docs/scheduling.md "Heterogeneous pools").

Not a GIE or llm-d plugin: our own; see docs/scheduling.md for the measurements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.datastore.inflight import CHARACTERS_PER_TOKEN, InflightTracker
from epp.datastore.inflight import SERVICE_KEY as TRACKER_KEY
from epp.scheduling.plugins._loads import waiting
from epp.scheduling.plugins._normalize import lower_is_better
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest


@register_plugin
class PrefillLoadScorer:
    type_name: ClassVar[str] = "prefill-load-scorer"
    consumes: ClassVar[tuple[str, ...]] = ("inflight.recent_prompt_tokens", "inflight.slowness",
                                           "metrics.waiting_queue_size")

    @dataclass(slots=True)
    class Params:
        speed_aware: bool = False
        # With speedAware: also learn speeds from the pods' scraped inter-token latency
        # (InflightTracker, "engine step time"); false = from completions only.
        engine_latency: bool = False

        def validate(self) -> None:
            pass

    def __init__(self, *, name: str | None = None, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name or self.type_name
        self.params = params if params is not None else self.Params()
        self.speed_aware = self.params.speed_aware
        tracker = ctx.services.get(TRACKER_KEY) if ctx is not None else None
        if not isinstance(tracker, InflightTracker):
            # Built outside a server (config validation, tests): a private ledger that no one
            # charges scores every endpoint equal.
            tracker = InflightTracker()
            if ctx is not None:
                ctx.services[TRACKER_KEY] = tracker
        self.tracker: InflightTracker = tracker
        if self.speed_aware:
            tracker.speed_aware_decay = True
            tracker.learn_from_engine_latency = self.params.engine_latency

    def score(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        tracker = self.tracker
        per_request = max(1, len(request.prompt_text()) // CHARACTERS_PER_TOKEN)
        recent = tracker.recent_prompt_tokens_of(endpoints, tracker.clock())
        # max(recent, queued) as `q if q > r else r`: same result, no builtin call per endpoint.
        loads = [q if q > r else r for r, q in zip(
            recent, [w * per_request for w in waiting(endpoints)], strict=True)]
        slowness = tracker.slowness_of(endpoints) if self.speed_aware else None
        if slowness is not None:
            # (load + this prompt) x slowness: the time the pod needs for what it was sent
            # lately plus this request's prefill, in units of a full-speed pod.
            loads = [(load + per_request) * slow for load, slow in zip(loads, slowness, strict=True)]
        return lower_is_better(loads)
