"""The one latency runtime of an EPP process, shared by the latency plugins.

Kept in `PluginContext.services[SERVICE_KEY]`; whichever latency plugin is built first
creates it, the predicted-latency-producer configures it. It holds:

- the pool's LatencyPredictor (one per process: one EPP serves one pool);
- a ledger of the EPP's requests per pod (this process's, and its peer workers' with
  `--workers N`: epp/latency/sharing.py) that have not produced a first byte yet
  (their prompt tokens are the prefill queue a new request waits behind) and of the decode
  tokens still expected from every in-flight request: built on the decisions
  (pre-request), the response headers (first byte) and the stream ends (post-response);
- per-request records: the features and predictions at decision time, turned into training
  samples and predicted-vs-actual metrics when the latencies are observed;
- per-cycle predictions: computed once per scheduling cycle for every candidate and shared by
  the filter, the scorer and the admitter through the CycleState;
- the Prometheus metrics (registered into the server's registry when there is one).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epp.datastore.endpoint import Endpoint
from epp.datastore.inflight import CHARACTERS_PER_TOKEN
from epp.latency.metrics import LatencyMetrics
from epp.latency.predictor import NEW_TOKENS, QUEUE_CLEAR, LatencyPredictor, PodModel, PredictorConfig
from epp.latency.slo import NO_SLO, SLO, ObjectiveSLO, request_slo
from epp.latency.steps import StepProbe
from epp.scheduling.types import CycleState, LLMRequest, cached_prompt_tokens

if TYPE_CHECKING:
    from epp.latency.sharing import LatencySharing
    from epp.scheduling.interfaces import PrefixMatchProducer

SERVICE_KEY = "latency.runtime"
REGISTRY_KEY = "metrics.registry"  # the server's CollectorRegistry (epp/server/app.py)
STATE_KEY = "latency/cycle"
DEFAULT_OUTPUT_TOKENS = 256  # expected decode tokens of a request without max_tokens
RECORD_TTL_S = 600.0  # a record with no stream end after this long is dropped (leak bound)
# Time constant of the pool's dispatch rate (an exponentially decayed count): long enough to
# span a few long prefills' service times, short enough to follow a change in the load.
DISPATCH_RATE_TAU_S = 10.0
# A deferred request waits at most 1.5x the prefill ahead's time to its due first byte, plus
# this (LatencyRuntime.on_dispatch).
DEFER_MARGIN_S = 0.25


@dataclass(slots=True)
class CyclePredictions:
    """Predictions of one scheduling cycle, by endpoint key: (TTFT s, TPOT s)."""

    slo: SLO
    prompt_tokens: int
    by_key: dict[str, tuple[float, float]] = field(default_factory=dict)
    # What each candidate's prediction was made of: its pod's state terms, the request's new
    # k tokens there and its queue wait (LatencyRuntime.cycle). Its feature vector is built from
    # them only when read (features_of): a decision reads a few of 64.
    inputs: dict[str, tuple[_StateTerms, float, float]] = field(default_factory=dict)
    features: dict[str, list[float]] = field(default_factory=dict)  # the feature vectors built
    # Any, not object, on these two: compiled by mypyc (epp/latency/native.py), a dataclass
    # with an `object` field fails at import (KeyError: 'object', mypy 2.4.1).
    prefix_source: Any = None  # the cached-tokens dict used (None: no prefix info yet)
    # The candidates last predicted in full with that prefix info: the filters and the scorer
    # that follow get the same sequence when nothing was filtered out.
    complete_for: Any = None
    predict_ns: int = 0  # time spent predicting in this cycle (observed once, at dispatch)

    def headroom(self, key: str) -> tuple[float, float]:
        """(TTFT, TPOT) headroom in seconds, SLO - predicted; +inf where there is no target."""
        ttft, tpot = self.by_key[key]
        slo = self.slo
        h_ttft = math.inf if slo.ttft_s is None else slo.ttft_s - ttft
        h_tpot = math.inf if slo.tpot_s is None or tpot != tpot else slo.tpot_s - tpot
        return h_ttft, h_tpot

    def has_features(self, key: str) -> bool:
        return key in self.inputs or key in self.features

    def features_of(self, key: str) -> list[float]:
        """Candidate `key`'s feature vector (LatencyRuntime.features); KeyError when it was not
        predicted. Built once and shared: callers copy it before changing it."""
        x = self.features.get(key)
        if x is None:
            terms, new, wait = self.inputs[key]
            x = self.features[key] = terms.x.copy()
            x[NEW_TOKENS] = new
            x[QUEUE_CLEAR] = wait
        return x

    def new_tokens(self, key: str) -> float:
        """The request's new prompt k tokens on candidate `key` (not covered by its prefix cache)."""
        x = self.features.get(key)
        return x[NEW_TOKENS] if x is not None else self.inputs[key][1]

    def meets(self, key: str) -> bool:
        h_ttft, h_tpot = self.headroom(key)
        return h_ttft >= 0.0 and h_tpot >= 0.0

    def meeting(self, keys: Iterable[str]) -> list[bool]:
        """`meets` of each of `keys`, in one pass (the filter and the scorer ask it of every
        candidate). A NaN TTFT never meets a target; a NaN TPOT always does, as in headroom."""
        by_key = self.by_key
        return self.meeting_of([by_key[key] for key in keys])

    def meeting_of(self, preds: Sequence[tuple[float, float]]) -> list[bool]:
        """`meeting` of the candidates predicted `preds` ((TTFT, TPOT) each, from by_key)."""
        ttft_s, tpot_s = self.slo.ttft_s, self.slo.tpot_s
        if ttft_s is None:
            if tpot_s is None:
                return [True] * len(preds)
            return [not tpot > tpot_s for _, tpot in preds]
        if tpot_s is None:
            return [ttft <= ttft_s for ttft, _ in preds]
        return [ttft <= ttft_s and not tpot > tpot_s for ttft, tpot in preds]


@dataclass(frozen=True, slots=True)
class _StateTerms:
    """One pod's state as the features see it, and the state part of its model's dot products
    (PodModel.state_terms), for as long as neither changes (LatencyRuntime.cycle)."""

    model: PodModel
    # The endpoint's part: waiting, running, in flight, KV usage.
    state: tuple[int, int, int, float]
    # The runtime's own part: pending prefill and in-flight decode k tokens. Compared only for
    # the pods whose ledger changed since (LatencyRuntime._ledger_changed), which costs less
    # than reading it for every candidate.
    ledger: tuple[float, float]
    x: list[float]  # the features with new tokens and queue wait 0
    terms: tuple[float, float, float, float]

    @classmethod
    def of(cls, model: PodModel, state: tuple[int, int, int, float], ledger: tuple[float, float]) -> _StateTerms:
        waiting, running, inflight, kv = state
        pending, decode = ledger
        x = state_features((pending, waiting, running, inflight, decode, kv))
        return cls(model, state, ledger, x, model.state_terms(x))


def state_features(state: tuple[float, int, int, int, float, float]) -> list[float]:
    """The feature vector (epp/latency/predictor.py FEATURES) of a pod's state: pending prefill
    k tokens, waiting, running, in flight, in-flight decode k tokens, KV usage; with the
    request's new tokens and the queue wait 0."""
    pending, waiting, running, inflight, decode, kv = state
    return [1.0, 0.0, pending, 0.0, float(waiting), float(running), float(inflight), decode, kv]


@dataclass(slots=True)
class QueuedStep:
    """One engine step of a pod's virtual prefill queue: the request that started it and those
    that joined it (LatencyRuntime.joins_last_step), all prefilled together, with one first
    byte at its end."""

    service: float = 0.0  # the sum of its pending members' charges (RequestRecord.service)
    members: int = 0  # its pending members
    deferred: bool = False  # its requests wait in the EPP for the prefill ahead (LatencyRuntime.deferral_head)


@dataclass(slots=True)
class RequestRecord:
    request: LLMRequest
    pod: str
    model: str
    target_model: str
    slo: SLO
    features: list[float]
    predicted_ttft: float
    predicted_tpot: float
    new_tokens: float  # k tokens charged to the pod's pending prefill
    decode_tokens: float  # k tokens charged to the pod's in-flight decode
    dispatched: float  # monotonic
    virtual_first_byte: float = 0.0  # when the pod's virtual queue expects its first byte (0: unknown)
    # What it adds to the virtual queue: a step of its own (LatencyPredictor.queue_service), or
    # only its tokens' share of a step when it joins the last queued step
    # (LatencyRuntime.joins_last_step).
    service: float = 0.0
    step: QueuedStep | None = None  # its step in the virtual queue (None: not timed)
    first_byte: float = 0.0
    prefill_released: bool = False
    # Seconds of prefill (predicted service times) dispatched to its pod after it, while it
    # was in flight: the decode stall it has been dealt so far (running_tpot_harm).
    stalled: float = 0.0
    # Seconds of stall it can take before its mean TPOT passes its TPOT target: (the target -
    # its predicted TPOT, 0 when unknown) x its decode steps (max_tokens - 1). Set at dispatch
    # so that running_tpot_harm, asked per candidate pod, reads one number per request.
    stall_budget: float = math.inf
    # The records pending on its pod at dispatch, kept when one of them (or it) had no
    # predicted service time (the predictor was untrained): the virtual queue then missed their
    # work, so the queue feature it learns from is set in hindsight, from their first bytes.
    ahead: list[RequestRecord] | None = None
    # k prompt tokens sent to its pod since its pending queue was last empty, its own included
    # (LatencyRuntime.prefill_stream after it): where its last prefill step ends.
    stream_end: float = 0.0
    # Which worker dispatched it: -1 this process, else a peer worker's id (epp/latency/sharing.py);
    # with `seq`, its dispatcher's serial number, it names the request on the peer bus.
    origin: int = -1
    seq: int = 0
    # Held in the EPP until the long prefill ahead of it on its pod had its first byte
    # (LatencyRuntime.deferral_head); `sent`, when it was let go (0: at once, at `dispatched`).
    deferred: bool = False
    sent: float = 0.0


class LatencyRuntime:
    def __init__(self, config: PredictorConfig | None = None) -> None:
        self.predictor = LatencyPredictor(config)
        self.metrics = LatencyMetrics(self.predictor)
        self.objective_slos: Mapping[str, ObjectiveSLO] = {}
        self.score_without_slo = False
        self.pending_prefill: dict[str, float] = {}  # pod key -> k tokens awaiting a first byte
        self.inflight_decode: dict[str, float] = {}  # pod key -> k decode tokens still expected
        # pod key -> monotonic time the pod's prefill queue of this EPP's requests clears: a
        # virtual FCFS queue, charged at dispatch with the request's predicted service time on
        # an idle pod (start at max(now, clear time)), or its tokens' share of a step when it
        # joins the last queued step (joins_last_step); when the oldest pending request's first
        # byte comes, the rest's services from then; a younger one's takes its service off;
        # reset when none is pending. How many requests are pending there.
        self.queue_clear_at: dict[str, float] = {}
        self.pending_count: dict[str, int] = {}
        # pod key -> the sum of its pending records' `service`: what the queue holds after its
        # head, in O(1) per candidate however long a queue grows (first bytes that stop coming).
        self.queued_service: dict[str, float] = {}
        # pod key -> how many of its pending requests the virtual queue has no time for (sent
        # while the predictor was untrained): requests behind them learn their queue time in
        # hindsight (RequestRecord.ahead).
        self.untimed_pending: dict[str, int] = {}
        # pod key -> the pod's pending records in dispatch order (a dict as an ordered set):
        # only the head's first byte moves the virtual queue (FCFS).
        self._pending_order: dict[str, dict[int, RequestRecord]] = {}
        # pod key -> monotonic time its oldest pending request became the head of its queue
        # (dispatched to an empty queue, or the previous head released): the head's first
        # byte is due `service` later (queue_wait).
        self._head_since: dict[str, float] = {}
        # pod key -> monotonic time the last step of its virtual queue starts: set by a request
        # charged a step of its own, kept by those that join it (joins_last_step), moved with
        # the queue by the first bytes.
        self._step_start: dict[str, float] = {}
        # pod key -> the last step of its virtual queue, while requests are pending there.
        self._last_step: dict[str, QueuedStep] = {}
        # pod key -> its last step end seen (a first byte), to learn its step time from.
        self._step_probes: dict[str, StepProbe] = {}
        # pod key -> k prompt tokens dispatched there since its pending queue was last empty:
        # where the chunk boundaries of its prefill stream fall (last_chunk_free_tokens).
        self.prefill_stream: dict[str, float] = {}
        # The pods' step token budget (vLLM's max_num_batched_tokens), which the latency scorer
        # is configured with; 0: unknown, and a head's last step is taken to hold it alone
        # (_carried_over).
        self.chunk_tokens = 0
        # pod key -> this EPP's in-flight requests there that carry a TPOT target (dispatched,
        # stream not ended): the decode a new prefill on that pod would stall.
        self.tpot_slo_inflight: dict[str, dict[int, RequestRecord]] = {}
        # The prefix scorer asked for the cycle's matches before the first prediction
        # (predicted-latency-producer's prefixMatchInfoProducerName); None: predictions count
        # cached tokens once a prefix scorer has run in the cycle.
        self.prefix_producer: PrefixMatchProducer | None = None
        # pod key -> the stall budgets those requests have left (stall_budget - stalled), those
        # not spent (>= 0), sorted: built by running_tpot_harms when asked, dropped when the
        # pod's guard changes. A decision asks every candidate, and one dispatch changes one pod.
        self._tpot_budgets_left: dict[str, list[float]] = {}
        self._records: dict[int, RequestRecord] = {}
        self._state_terms: dict[str, _StateTerms] = {}  # pod key -> (cycle)
        self._state_terms_version = -1  # the predictor's version they were computed for
        # pod key: its pending prefill or in-flight decode changed since its state terms were
        # last checked (cycle).
        self._ledger_changed: set[str] = set()
        # This EPP's recent dispatches to the pool as an exponentially decayed count and the
        # monotonic time of its last update (dispatch_rate).
        self._dispatch_count = 0.0
        self._dispatch_count_at = 0.0
        self._dispatches = 0
        self._seq = 0  # the serial number of this process's last dispatch (RequestRecord.seq)
        # The peer workers' requests not ended yet, by (worker, seq); and the bus that tells
        # them this process's (None: one worker).
        self._foreign: dict[tuple[int, int], RequestRecord] = {}
        self.peers: LatencySharing | None = None
        self._registered: set[int] = set()
        self.clock = time.monotonic
        # Deferral (predicted-latency-producer deferBehindPrefillTokens): a request for a pod
        # that is prefilling a prompt of at least `defer_min_ktokens` k new tokens waits in the
        # EPP for that prefill's first byte, at most `max_defer_s` (0: off). By id of the
        # awaited request: its Deferral.
        self.defer_min_ktokens = 0.0
        self.max_defer_s = 0.0
        self._deferrals: dict[int, Deferral] = {}
        # id of a pending request -> the held requests, this process's and its peers', that go
        # at its first byte: each worker times them from then (RequestRecord.sent).
        self._held_behind: dict[int, list[RequestRecord]] = {}

    # --- setup ------------------------------------------------------------------------------
    def register_metrics(self, services: Mapping[str, Any]) -> None:
        registry = services.get(REGISTRY_KEY)
        if registry is not None and id(registry) not in self._registered:
            registry.register(self.metrics)
            self._registered.add(id(registry))

    def warm_start(self, path: Path | None) -> bool:
        self.predictor.state_path = path
        loaded = self.predictor.load(path) if path is not None else False
        self.predictor.start()
        return loaded

    # --- per cycle (hot path) -----------------------------------------------------------------
    def slo_of(self, request: LLMRequest) -> SLO:
        return request_slo(request, self.objective_slos)

    def cycle(self, state: CycleState, request: LLMRequest,
              endpoints: Sequence[Endpoint]) -> CyclePredictions | None:
        """Predictions for `endpoints`, computed once per cycle; None while the predictor is
        untrained, or for a request without SLO unless `score_without_slo`: the plugins then
        step aside and the weighted scorers decide alone (the fallback)."""
        entry: CyclePredictions | bool | None = state.get(STATE_KEY)
        if entry is False:
            return None
        if isinstance(entry, CyclePredictions):
            cached = entry
        else:
            slo = self.slo_of(request)  # raises SchedulingError(400) on a bad header
            if not self.predictor.ready or (slo.empty and not self.score_without_slo):
                state[STATE_KEY] = False
                return None
            cached = CyclePredictions(slo, len(request.prompt_text()) // CHARACTERS_PER_TOKEN)
            state[STATE_KEY] = cached
            producer = self.prefix_producer
            if producer is not None:
                # The cycle's prefix matches for these candidates before their first prediction:
                # the admitter and the headroom filter run before any scorer, and without them
                # judged a pod holding most of a conversation by its whole prompt (llm-d's
                # producer reads them from the prefix plugin's data, produced before
                # scheduling). Also when that scorer ran in an earlier profile of the cycle,
                # on other candidates.
                producer.produce_prefix_matches(state, request, endpoints)
        prefix = cached_prompt_tokens(state)
        if prefix is not cached.prefix_source:
            # A prefix scorer ran since: pods holding part of the prompt have fewer new tokens.
            cached.prefix_source = prefix
            if prefix:
                for key, tokens in prefix.items():
                    if tokens > 0 and cached.by_key.pop(key, None) is not None:
                        cached.features.pop(key, None)
                        cached.complete_for = None
        if endpoints is cached.complete_for:
            return cached
        by_key = cached.by_key
        # The candidates not predicted yet in this cycle.
        todo = [ep for ep in endpoints if ep.key not in by_key] if by_key else endpoints
        t0 = time.perf_counter_ns()
        # features() and predict() per candidate, unrolled, with the state part of each pod's
        # dot products kept while its state and model are unchanged (_StateTerms), and no
        # feature vector built (CyclePredictions.features_of): at 64 pods the calls, lookups
        # and nine-term dot products were most of a decision's cost (docs/latency-routing.md,
        # "Cost per decision"). Held to features() and predict() by
        # test_cycle_predicts_as_features_and_predict.
        now = self.clock()
        predictor = self.predictor
        if self._state_terms_version != predictor.version:
            # Every entry's model is stale after a publication (models are read after the
            # version: LatencyPredictor.models). Dropping them also bounds the dict to the pods
            # of the last half second or so (the trainer's interval).
            self._state_terms_version = predictor.version
            self._state_terms.clear()
            self._ledger_changed.clear()
        pod_model = predictor.pod_model
        clear_at = self.queue_clear_at
        pending, decode, memo = self.pending_prefill, self.inflight_decode, self._state_terms
        changed = self._ledger_changed
        inputs, prompt_tokens = cached.inputs, cached.prompt_tokens
        second = bool(inputs)  # predicted earlier in this cycle, before the prefix info
        all_new = prompt_tokens / 1000.0
        for ep in todo:
            key = ep.key
            if prefix and (cached_tokens := prefix.get(key, 0)):
                new = max(0, prompt_tokens - cached_tokens) / 1000.0
            else:
                new = all_new
            earlier = inputs.get(key) if second else None
            if earlier is not None:
                # Only the new tokens differ: the pod's state terms, its wait and the model are
                # the first pass's (nothing of ours runs between a cycle's plugins; a model
                # published meanwhile serves the next decision, as for the other candidates).
                terms, wait = earlier[0], earlier[2]
            else:
                # First: it retires a response not streamed whose prefill is done (pending changes).
                wait = self._queue_wait(key, now) if clear_at.get(key) else 0.0
                m = ep.metrics
                pod_state = (m.waiting_queue_size, m.running_requests, ep.inflight + ep.peer_inflight,
                             m.kv_cache_usage)
                kept = memo.get(key)
                if key in changed:
                    changed.discard(key)
                    ledger = (pending.get(key, 0.0), decode.get(key, 0.0))
                    if kept is not None and kept.ledger != ledger:
                        kept = None
                if kept is None or kept.state != pod_state:
                    kept = memo[key] = _StateTerms.of(pod_model(key), pod_state,
                                                      (pending.get(key, 0.0), decode.get(key, 0.0)))
                terms = kept
            inputs[key] = (terms, new, wait)
            model = terms.model
            linear = model.in_linear
            if linear is not None and new <= model.new_cover and wait <= model.queue_cover:
                # predict_split inside the cover, inline: the call and its lookups were a third
                # of a candidate's cost.
                ttft_new, ttft_queue, ttft_speed, ttft_floor, tpot_new, tpot_queue, tpot_speed, tpot_floor = linear
                state_terms = terms.terms
                own_part = state_terms[0] + ttft_new * new + ttft_queue * wait
                ttft = wait + ttft_speed * own_part if own_part > 0.0 else wait
                if ttft < ttft_floor:
                    ttft = ttft_floor
                tpot = tpot_speed * (state_terms[2] + tpot_new * new + tpot_queue * wait)
                if tpot < tpot_floor:
                    tpot = tpot_floor
                prediction = (ttft, tpot)
            else:
                prediction = model.predict_split(terms.terms, new, wait)
            # Behind a queue, the TTFT is the wait plus a step of its own or its share of the
            # last one (_queued); a pod with no wait has no step ahead.
            by_key[key] = self._queued(key, model, new, wait, prediction, now) if wait else prediction
        cached.predict_ns += time.perf_counter_ns() - t0
        cached.complete_for = endpoints
        return cached

    def service_times(self, cycle: CyclePredictions, keys: Sequence[str]) -> list[float]:
        """`predictor.service_time(key, cycle.new_tokens(key))` of each of `keys`, in one pass,
        with the model each was predicted with in the cycle (one model snapshot per decision)."""
        inputs, features = cycle.inputs, cycle.features
        service_time = self.predictor.service_time
        out = []
        for key in keys:
            entry = inputs.get(key)
            if entry is not None and key not in features:
                new = entry[1]
                model = entry[0].model
                idle = model.idle_in
                if idle is not None and new <= model.new_cover:
                    # PodModel.service_time inside the cover, inline (asked of every candidate).
                    intercept, per_ktoken, speed, floor = idle
                    own = intercept + per_ktoken * new
                    seconds = speed * own if own > 0.0 else 0.0
                    out.append(seconds if seconds > floor else floor)
                else:
                    out.append(model.service_time(new))
            else:  # a feature vector given, or read, instead (CyclePredictions.new_tokens)
                out.append(service_time(key, cycle.new_tokens(key)))
        return out

    def predict(self, key: str, x: Sequence[float]) -> tuple[float, float]:
        """(TTFT s, TPOT s) of a request with features `x` on pod `key`: the predictor's,
        except behind a queue (a wait): see _queued."""
        model = self.predictor.pod_model(key)
        prediction = model.predict(x)
        wait = x[QUEUE_CLEAR]
        return self._queued(key, model, x[NEW_TOKENS], wait, prediction, self.clock()) if wait else prediction

    def _queued(self, key: str, model: PodModel, new_prompt_ktokens: float, wait: float,
                prediction: tuple[float, float], now: float) -> tuple[float, float]:
        """`prediction` for a request that finds `wait` seconds of queue on pod `key`. Its first
        byte comes with the end of its engine step. If it joins the last queued step
        (joins_last_step), that is the wait plus its tokens' share of the step. Otherwise it is
        the wait plus a step of its own, from the pod's step time, inside its cover
        (epp/latency/steps.py). Floored at the pod's TTFT floor. Beyond the step time's cover,
        or without one, the model's TTFT stands."""
        ttft, tpot = prediction
        if ttft == ttft:
            if self.joins_last_step(key, now):
                share = model.step_share(new_prompt_ktokens)
                if share == share:
                    ttft = max(model.ttft_floor, wait + share)
            elif new_prompt_ktokens <= model.step_cover:
                ttft = max(model.ttft_floor, wait + model.step_base + model.step_per_ktoken * new_prompt_ktokens)
        return ttft, tpot

    def joins_last_step(self, key: str, now: float) -> bool:
        """Whether a request sent to pod `key` now would be prefilled in the same engine step as
        the last step queued there: that step has not started yet by the virtual queue, its
        requests still wait behind the work ahead of them. vLLM packs the waiting
        prefills into each step's token budget, so both start in the step after that work and
        the newer one adds only its tokens to it. Charged a whole step of its own instead, a
        burst of chats read as a queue of steps (the slow pod's chats in one 90% run were
        predicted 0.9-2.3 s and took 0.5-0.8 s); charged one step less whenever others were
        pending, a chat behind a step already running read as nearly free (e69f1bd, reverted).

        The last step has not started either while a request of an earlier step is pending:
        steps run one after the other, so it starts at their first byte, however late that
        comes. Going by the estimated start alone, the chats sent after it, while the step
        ahead ran late, were each charged a step of their own, and predicted a step too late
        (docs/latency-routing.md, "Engine steps from first bytes")."""
        last = self._last_step.get(key)
        if last is None or not last.members:
            return False
        if not last.deferred and self.defer_min_ktokens and self.deferral_head(key) is not None:
            return False  # it would wait for that step's end, and take a step of its own after
        return self._step_start.get(key, 0.0) > now or self.pending_count.get(key, 0) > last.members

    def _last_not_held(self, key: str) -> RequestRecord | None:
        order = self._pending_order.get(key)
        if order:
            for record in reversed(order.values()):
                if not record.deferred:
                    return record
        return None

    def deferral_head(self, key: str) -> RequestRecord | None:
        """The request a request sent to pod `key` now would wait for in the EPP (deferral),
        or None. vLLM fills each step's token budget first come, first served, so whatever
        reaches a pod while a prompt is prefilling there is prefilled in that prompt's last
        step, which lasts longer by its tokens: up to a whole step (1.8 s on the benchmark's
        pods) on the long prompt's first token. Held until that first byte, it takes a step of
        its own right after, which costs it about one step's base time. The request waited
        for is the last one sent there and not held itself, when it is streamed (its first
        byte is its first token), timed by the virtual queue, has at least
        `defer_min_ktokens` new tokens, and its last step has budget left free
        (`chunk_tokens` known)."""
        head = self._last_not_held(key)
        if head is None:
            return None
        if (head.new_tokens < self.defer_min_ktokens or not head.request.stream or not head.virtual_first_byte
                or not _free_step_tokens(head.stream_end, self.chunk_tokens)):
            return None
        return head

    def features(self, ep: Endpoint, prompt_tokens: int, cached_tokens: int) -> list[float]:
        key = ep.key
        wait = self.queue_wait(key)  # first: it retires a response not streamed whose prefill is done
        m = ep.metrics
        x = state_features((self.pending_prefill.get(key, 0.0), m.waiting_queue_size, m.running_requests,
                            ep.inflight + ep.peer_inflight, self.inflight_decode.get(key, 0.0), m.kv_cache_usage))
        x[NEW_TOKENS] = max(0, prompt_tokens - cached_tokens) / 1000.0
        x[QUEUE_CLEAR] = wait
        return x

    def queue_wait(self, key: str) -> float:
        """Seconds until the pod's virtual prefill queue clears (the queue_clear_s feature).
        Retires a response not streamed whose prefill is done (_retire_not_streamed)."""
        return self._queue_wait(key, self.clock()) if self.queue_clear_at.get(key) else 0.0

    def _queue_wait(self, key: str, now: float) -> float:
        """queue_wait at `now`.

        While the head of the queue is not overdue, the virtual queue's clear time. Once its
        first byte is `late` seconds past due, the model was wrong about it, and the virtual
        queue, which reads it done, would make the pod look idle to every request while a
        prompt it took for 0.5 s runs for 11 s (a mis-learnt speed did that once: 14 of 23
        long prompts went to the slow pod). The head's remaining time is then taken as
        `late` x min(1, late / its predicted service): about nothing for a head a little
        late, as long again as it is late for one that took twice its prediction or more;
        the rest of the queue follows it."""
        clear_at = self.queue_clear_at.get(key, 0.0)
        if not clear_at:
            return 0.0
        order = self._pending_order.get(key)
        if order:
            head = next(iter(order.values()))
            if not head.request.stream and head.virtual_first_byte and head.virtual_first_byte <= now:
                self._retire_not_streamed(key, now)
                return self._queue_wait(key, now)
            # The head is due when its step ends: its own charge and those of the requests that
            # joined its step. Timed by its own charge alone, a head whose step others had
            # joined read as late, and the wait behind it as up to 2x too long.
            due = head.step.service if head.step is not None else head.service
            late = now - self._head_since.get(key, now) - due
            # A head not streamed has no first byte before its whole response: not late.
            if late > 0.0 and head.virtual_first_byte and head.request.stream:
                remaining = late * min(1.0, late / due) if due > 0.0 else late
                return remaining + max(0.0, self.queued_service.get(key, 0.0) - due)
        return max(0.0, clear_at - now)

    def _retire_not_streamed(self, key: str, now: float) -> None:
        """Take the prefill of the responses not streamed at the head of pod `key`'s queue as
        done at their virtual first byte once that has passed. Their headers come only with
        the whole response, seconds of decode later: until then their tokens counted as
        pending there, and the request behind them was never the head, so its own lateness
        went unseen (queue_wait). FCFS: the next head is timed from that moment."""
        order = self._pending_order.get(key)
        while order:
            head = next(iter(order.values()))
            if head.request.stream or not head.virtual_first_byte or head.virtual_first_byte > now:
                return
            self._release_prefill(head)
            if order:
                self._head_since[key] = head.virtual_first_byte

    # --- request lifecycle ----------------------------------------------------------------
    def on_dispatch(self, state: CycleState, request: LLMRequest, target: Endpoint) -> Deferral | None:
        """The decision is final: charge the ledger and remember what was predicted. Returns
        the deferral the request must wait for before it is sent, if any (deferral_head)."""
        cycle: CyclePredictions | bool | None = state.get(STATE_KEY)
        if isinstance(cycle, CyclePredictions):
            # The cycle's prediction for the target, brought up to date with the prefix info.
            self.cycle(state, request, (target,))
            slo = cycle.slo
            x = cycle.features_of(target.key)
            ttft, tpot = cycle.by_key[target.key]
            if cycle.predict_ns:
                self.metrics.observe_prediction_duration(request, cycle.predict_ns / 1e9)
        else:
            try:
                slo = self.slo_of(request)
            except Exception:  # a bad header was answered with a 400 already; never fail here
                slo = NO_SLO
            prefix = cached_prompt_tokens(state)
            x = self.features(target, len(request.prompt_text()) // CHARACTERS_PER_TOKEN,
                              prefix.get(target.key, 0) if prefix else 0)
            ttft, tpot = self.predict(target.key, x) if self.predictor.ready else (math.nan, math.nan)
        record = RequestRecord(request, target.key, request.model, request.target_model, slo, x, ttft, tpot,
                               x[1], expected_output_tokens(request) / 1000.0, self.clock())
        deferral: Deferral | None = None
        if self.defer_min_ktokens:
            head = self.deferral_head(target.key)
            if head is not None:
                deferral = self._deferrals.get(id(head.request))
                if deferral is None:
                    # Until its virtual first byte, and half as long again as it is due in, plus
                    # a margin: a head much later than predicted lets them go.
                    due = max(0.0, head.virtual_first_byte - record.dispatched)
                    deferral = self._deferrals[id(head.request)] = Deferral(
                        id(head.request), record.dispatched + min(self.max_defer_s, 1.5 * due + DEFER_MARGIN_S))
                deferral.records.append(record)
                record.deferred = True
        if slo.tpot_s is not None:
            steps = max(1, expected_output_tokens(request) - 1)
            record.stall_budget = (slo.tpot_s - (tpot if tpot == tpot else 0.0)) * steps
        self._seq += 1
        record.seq = self._seq
        self._records[id(request)] = record
        self._enqueue(record)
        if ttft == ttft:
            self.metrics.observe_predicted(record)
        if self.peers is not None:
            self.peers.dispatched(record)
        return deferral

    def _enqueue(self, record: RequestRecord) -> None:
        """Put a dispatched request, this process's or a peer's, in its pod's ledger, virtual
        prefill queue and TPOT guard, and count it in the dispatch rate (every 1024th
        dispatch expires the records that never ended)."""
        pod = record.pod
        if record.deferred:
            head = self._last_not_held(pod)
            if head is not None:
                self._held_behind.setdefault(id(head.request), []).append(record)
        # Before this request counts as pending there.
        joins = self.joins_last_step(pod, record.dispatched)
        self.pending_prefill[pod] = self.pending_prefill.get(pod, 0.0) + record.new_tokens
        self._ledger_changed.add(pod)  # pending prefill, and in-flight decode below
        self.pending_count[pod] = self.pending_count.get(pod, 0) + 1
        last = self._last_step.get(pod)
        if record.deferred and (last is None or not last.deferred):
            # It reaches the pod when the prefill ahead is done: its own prefill stream starts.
            self.prefill_stream[pod] = 0.0
        # Reset to 0 when the pod's pending queue empties (_release_prefill).
        record.stream_end = self.prefill_stream[pod] = self.prefill_stream.get(pod, 0.0) + record.new_tokens
        service = self.predictor.service_time(pod, record.new_tokens) if self.predictor.ready else math.nan
        if service == service:
            start = max(record.dispatched, self.queue_clear_at.get(pod, 0.0))
            share = self.predictor.step_share(pod, record.new_tokens) if joins else math.nan
            if share == share:
                record.service = share
                step = self._last_step[pod]
            else:
                record.service = self.predictor.queue_service(pod, record.new_tokens)
                self._step_start[pod] = start
                step = self._last_step[pod] = QueuedStep(deferred=record.deferred)
            record.step = step
            step.service += record.service
            step.members += 1
            record.virtual_first_byte = self.queue_clear_at[pod] = start + record.service
            self.queued_service[pod] = self.queued_service.get(pod, 0.0) + record.service
            guarded = self.tpot_slo_inflight.get(pod)
            if guarded:
                for running in guarded.values():
                    running.stalled += service
                self._tpot_budgets_left.pop(pod, None)
        self.inflight_decode[pod] = self.inflight_decode.get(pod, 0.0) + record.decode_tokens
        order = self._pending_order.setdefault(pod, {})
        if not order:
            self._head_since[pod] = record.dispatched
        elif service != service or self.untimed_pending.get(pod):
            record.ahead = list(order.values())
        order[id(record.request)] = record
        if not record.virtual_first_byte:
            self.untimed_pending[pod] = self.untimed_pending.get(pod, 0) + 1
        if record.slo.tpot_s is not None:
            self.tpot_slo_inflight.setdefault(pod, {})[id(record.request)] = record
            self._tpot_budgets_left.pop(pod, None)
        since = record.dispatched - self._dispatch_count_at
        if since >= 0.0:
            self._dispatch_count = self._dispatch_count * math.exp(-since / DISPATCH_RATE_TAU_S) + 1.0
            self._dispatch_count_at = record.dispatched
        else:  # a peer's, heard after a later one
            self._dispatch_count += math.exp(since / DISPATCH_RATE_TAU_S)
        self._dispatches += 1
        if self._dispatches % 1024 == 0:
            self._expire()

    def on_first_byte(self, request: LLMRequest, status: int) -> None:
        """The response's first byte came back (ResponseReceived): the request's prefill is
        done. For a streamed response that is its first body chunk, its first token; vLLM
        sends a stream's headers before the prefill (epp/server/extproc.py). A response that
        is not streamed sends its headers with the whole response: its prefill was done by
        then, but when is not known, so it teaches nothing (no TTFT or TPOT observation) and
        does not time the queue behind it."""
        record = self._records.get(id(request))
        if record is None or record.request is not request or record.first_byte:
            return
        self._first_byte(record, self.clock(), status)
        if self.peers is not None:
            self.peers.first_byte(record, status)

    def _first_byte(self, record: RequestRecord, at: float, status: int) -> None:
        record.first_byte = at
        request, pod = record.request, record.pod
        clear_at = self.queue_clear_at.get(pod, 0.0)
        if record.virtual_first_byte and not record.prefill_released and clear_at:
            order = self._pending_order.get(pod) or {}
            if not request.stream:
                # A response not streamed, whole: its work is done, and the part of its slot in
                # the virtual queue still ahead comes off; the head's timing is unknown still.
                ahead = min(record.service, max(0.0, record.virtual_first_byte - record.first_byte))
                self.queue_clear_at[pod] = max(record.first_byte, clear_at - ahead)
            elif next(iter(order.values()), None) is record:
                # The oldest pending request is done (FCFS): what is left is the service of
                # the others, from now, whether it ended late or early, less what the next
                # one prefilled in its last step.
                self._carried_over(record, order, at)
                others = max(0.0, self.queued_service.get(pod, 0.0) - record.service)
                self.queue_clear_at[pod] = record.first_byte + others
            else:
                # A younger request done first (batched with the head's last chunk): its work
                # is done; the head's says nothing new.
                self.queue_clear_at[pod] = max(record.first_byte, clear_at - record.service)
            # The queue's last step moves with it.
            step_start = self._step_start.get(pod, 0.0) + self.queue_clear_at[pod] - clear_at
            self._step_start[pod] = min(step_start, self.queue_clear_at[pod])
        self._release_prefill(record, at)
        if record.ahead is not None:
            self._queue_time_in_hindsight(record)
        if status != 200 or not request.stream:
            return
        probe = self._step_probes.get(pod)
        if probe is None:
            probe = self._step_probes[pod] = StepProbe()
        step = probe.first_byte(record.first_byte, record.sent or record.dispatched, record.new_tokens)
        if step is not None:
            self.predictor.observe_step(pod, *step)
        ttft = record.first_byte - record.dispatched
        self.predictor.observe("ttft", record.pod, record.features, ttft, record.predicted_ttft)
        if record.origin < 0:  # a peer's requests are in its own metrics
            self.metrics.observe_ttft(record, ttft)

    def on_complete(self, request: LLMRequest, response: Mapping[str, Any]) -> None:
        record = self._records.pop(id(request), None)
        if record is None or record.request is not request:
            return
        tokens = response.get("completion_tokens")
        completion_tokens = tokens if isinstance(tokens, int) else None
        at, status = self.clock(), response.get("status")
        self._complete(record, at, completion_tokens, status)
        if self.peers is not None:
            self.peers.completed(record, at, completion_tokens, status)

    def _complete(self, record: RequestRecord, at: float, tokens: int | None, status: object) -> None:
        self._release_prefill(record, at)
        self._release_decode(record)
        if not record.first_byte or not record.request.stream or status != 200 or tokens is None or tokens < 2:
            return
        # TPOT as vLLM and the benchmarks define it: decode time after the first token over
        # the tokens after the first.
        tpot = (at - record.first_byte) / (tokens - 1)
        self.predictor.observe("tpot", record.pod, record.features, tpot, record.predicted_tpot)
        if record.origin < 0:
            self.metrics.observe_tpot(record, tpot)

    # --- the other workers' requests (epp/latency/sharing.py) ---------------------------------
    def on_peer_dispatch(self, record: RequestRecord) -> None:
        """A peer worker's request to a pod of the pool: it queues there like this process's
        own (its `origin` and `seq` name it for the events that follow)."""
        key = (record.origin, record.seq)
        if record.origin < 0 or key in self._foreign:
            return
        self._foreign[key] = record
        # As the dispatching worker did when it read the pod's queue wait for its features.
        self._retire_not_streamed(record.pod, record.dispatched)
        self._enqueue(record)

    def on_peer_first_byte(self, worker: int, seq: int, at: float, status: int) -> None:
        record = self._foreign.get((worker, seq))
        if record is not None and not record.first_byte:
            self._first_byte(record, at, status)

    def on_peer_complete(self, worker: int, seq: int, at: float, tokens: int | None, status: object) -> None:
        record = self._foreign.pop((worker, seq), None)
        if record is not None:
            self._complete(record, at, tokens, status)

    def forget_peer(self, worker: int) -> int:
        """Drop a peer worker's requests (it restarted: their events will not come). Returns
        how many there were."""
        gone = [key for key in self._foreign if key[0] == worker]
        for key in gone:
            record = self._foreign.pop(key)
            self._release_prefill(record)
            self._release_decode(record)
        return len(gone)

    def peer_records(self) -> int:
        return len(self._foreign)

    @staticmethod
    def _queue_time_in_hindsight(record: RequestRecord) -> None:
        """Set the queue feature of a request that waited behind work the virtual queue did
        not time to the wait it had: from its dispatch to the last first byte of the requests
        ahead of it (FCFS: its prefill starts once theirs are done). Without it, waits behind
        a long prompt sent before the predictor was trained are learnt as the pod's slowness
        (a speed factor at the clamp). A response not streamed ahead says nothing: its headers
        came with its end, after its prefill by as long as it decoded."""
        ahead, record.ahead = record.ahead or [], None
        done = [r.first_byte for r in ahead if r.first_byte and r.request.stream]
        if done:
            x = list(record.features)  # the cycle's list is not ours to change
            x[QUEUE_CLEAR] = max(0.0, max(done) - record.dispatched)
            record.features = x

    def _carried_over(self, head: RequestRecord, order: Mapping[int, RequestRecord], at: float) -> None:
        """At the first byte of `head`, the oldest pending request on its pod: take off the
        service of the request next in line the part vLLM prefilled in head's last step.
        vLLM fills each step's token budget first come, first served, so the step that ends a
        prefill also starts the next one's, with the budget its last chunk left free. Without
        this the queue read the next prompt's whole prefill still ahead, and a long prompt
        behind another looked up to a step's time further from done than it was. The
        next request was in that step only if it was sent before the step began: a full
        step's time before `at`, by the pod's step time. A request that joined head's own
        step (joins_last_step), charged its tokens' share only, is credited the same way: in
        vLLM it too waits for the budget head's last chunk leaves."""
        chunk = self.chunk_tokens
        free = _free_step_tokens(head.stream_end, chunk)
        if not free:
            return
        pending = iter(order.values())
        next(pending, None)
        nxt = next(pending, None)
        if nxt is None or nxt.step is None or nxt.deferred:
            return  # (no step: sent untimed, nothing to credit; deferred: sent after that step)
        pod = head.pod
        step = self.predictor.queue_service(pod, chunk / 1000.0)
        if not nxt.dispatched <= at - step:  # (NaN without a model: no credit)
            return
        # The carried tokens' per-token time (step_share), as a request that joins a step is
        # charged: a difference of service times lost what the TTFT floor lifts an empty
        # prompt by (23-81 ms on the bench pods, so 100 carried tokens got no credit at all).
        credit = self.predictor.step_share(pod, min(nxt.new_tokens, free / 1000.0))
        if credit > nxt.service:
            credit = nxt.service
        if credit > 0.0:
            nxt.service -= credit
            nxt.step.service -= credit
            self.queued_service[pod] = max(0.0, self.queued_service.get(pod, 0.0) - credit)

    def _release_prefill(self, record: RequestRecord, at: float | None = None) -> None:
        if not record.prefill_released:
            record.prefill_released = True
            if self._held_behind:
                held = self._held_behind.pop(id(record.request), None)
                if held is not None:
                    sent = self.clock() if at is None else at
                    for behind in held:
                        if not behind.sent:
                            behind.sent = sent
                    deferral = self._deferrals.pop(id(record.request), None)
                    if deferral is not None:
                        self._let_go(deferral, sent)
            pod = record.pod
            order = self._pending_order.get(pod)
            if order:
                was_head = next(iter(order)) == id(record.request)
                order.pop(id(record.request), None)
                if was_head:
                    self._head_since[pod] = self.clock() if at is None else at
            if not record.virtual_first_byte:
                self.untimed_pending[pod] = max(0, self.untimed_pending.get(pod, 0) - 1)
            else:
                self.queued_service[pod] = max(0.0, self.queued_service.get(pod, 0.0) - record.service)
            step = record.step
            if step is not None:
                step.service = max(0.0, step.service - record.service)
                step.members -= 1
            self.pending_prefill[pod] = max(0.0, self.pending_prefill.get(pod, 0.0) - record.new_tokens)
            self._ledger_changed.add(pod)
            left = self.pending_count[pod] = max(0, self.pending_count.get(pod, 0) - 1)
            if left == 0:
                self.queue_clear_at[pod] = self._step_start[pod] = self.queued_service[pod] = 0.0
                self.prefill_stream[pod] = 0.0
                self._last_step.pop(pod, None)

    def end_deferral(self, deferral: Deferral) -> None:
        """Let a deferral's requests go at its deadline: the prefill ahead ran late, and those
        that come after it are sent at once."""
        if self._deferrals.get(deferral.head) is deferral:
            del self._deferrals[deferral.head]
        self._let_go(deferral, self.clock())

    def _let_go(self, deferral: Deferral, at: float) -> None:
        if deferral.released:
            return
        deferral.release(at)
        for record in deferral.records:
            if record.origin < 0:
                self.metrics.deferred.observe(max(0.0, at - record.dispatched))

    def _expire(self) -> None:
        cutoff = self.clock() - RECORD_TTL_S
        expired = [self._records.pop(k) for k, r in list(self._records.items()) if r.dispatched < cutoff]
        expired += [self._foreign.pop(k) for k, r in list(self._foreign.items()) if r.dispatched < cutoff]
        for record in expired:
            self._release_prefill(record)
            self._release_decode(record)

    def _release_decode(self, record: RequestRecord) -> None:
        pod = record.pod
        self.inflight_decode[pod] = max(0.0, self.inflight_decode.get(pod, 0.0) - record.decode_tokens)
        self._ledger_changed.add(pod)
        guarded = self.tpot_slo_inflight.get(pod)
        if guarded is not None and guarded.pop(id(record.request), None) is not None:
            self._tpot_budgets_left.pop(pod, None)

    def dispatch_rate(self) -> float:
        """Requests per second the EPP sent the pool lately: an exponentially decayed count of
        the dispatches over DISPATCH_RATE_TAU_S (0 before the first). This process's, and with
        `--workers N` its peer workers' (epp/latency/sharing.py)."""
        if not self._dispatch_count:
            return 0.0
        return self._dispatch_count * math.exp(
            (self._dispatch_count_at - self.clock()) / DISPATCH_RATE_TAU_S) / DISPATCH_RATE_TAU_S

    def running_tpot_harm(self, pod: str, stall_s: float) -> int:
        """How many of this EPP's in-flight requests on `pod` that carry a TPOT target a
        prefill stall of `stall_s` seconds would push past it. vLLM runs a long prefill's
        chunks in the same steps as the running decodes, so every decode there waits roughly
        the prefill's time; spread over a request's decode steps (its max_tokens - 1) that adds
        stall / steps to its mean TPOT, on top of the TPOT predicted for it at its decision
        (0 when it was unknown) and of the stalls the prefills dispatched there since have
        dealt it. One that those have pushed past its target already is not counted: the target is
        met or missed, and more stall cannot miss it twice (charging it made long prompts avoid
        pods whose chats were lost anyway, queueing behind each other elsewhere)."""
        harms = self.running_tpot_harms((pod,), (stall_s,))
        return harms[0][1] if harms else 0

    def running_tpot_harms(self, pods: Sequence[str], stalls: Sequence[float]) -> list[tuple[int, int]]:
        """(j, running_tpot_harm(pods[j], stalls[j])) for each position j where that is not 0,
        in one pass: the scorer asks it of every candidate, and most have no request with a
        TPOT target in flight."""
        guarded_of = self.tpot_slo_inflight
        out: list[tuple[int, int]] = []
        if not guarded_of:
            return out
        get = guarded_of.get
        budgets_of = self._tpot_budgets_left
        for j, pod in enumerate(pods):
            guarded = get(pod)
            if not guarded:
                continue
            stall_s = stalls[j]
            if not stall_s > 0.0:
                continue
            left = budgets_of.get(pod)
            if left is None:
                left = budgets_of[pod] = sorted(
                    b for record in guarded.values() if (b := record.stall_budget - record.stalled) >= 0.0)
            # Those with predicted TPOT + stalled / steps <= target < that + stall_s / steps:
            # 0 <= budget left < stall_s.
            harmed = bisect_left(left, stall_s)
            if harmed:
                out.append((j, harmed))
        return out

    def last_chunk_free_tokens(self, pod: str, chunk_tokens: int) -> int:
        """The prompt tokens a new request on `pod` would add to the last prefill step of the
        request queued last there (0 when none is pending). vLLM fills each step's token
        budget (max_num_batched_tokens) first-come first-served, so the step that finishes the
        last pending prefill also starts the next request's, and lasts longer by those
        tokens: that request's first token waits for them. Estimated from this EPP's prompt
        tokens sent to the pod since its pending queue was last empty, cut into chunks of
        `chunk_tokens` (the decode tokens that share the steps are ignored)."""
        if not self.pending_count.get(pod):
            return 0
        if self.defer_min_ktokens and self.deferral_head(pod) is not None:
            return 0  # deferred: it will not share that step
        return _free_step_tokens(self.prefill_stream.get(pod, 0.0), chunk_tokens)

    def open_records(self) -> int:
        return len(self._records)


class Deferral:
    """The requests waiting in the EPP for one prefill's first byte (LatencyRuntime.deferral_head),
    and when they go at the latest (`deadline`, on the runtime's clock). Each waits on a future
    of its own (add_waiter), set on the loop thread, where the runtime runs."""

    __slots__ = ("_waiters", "deadline", "head", "records", "released")

    def __init__(self, head: int, deadline: float) -> None:
        self.head = head  # id of the request whose first byte it waits for
        self.records: list[RequestRecord] = []
        self.deadline = deadline
        self.released = False
        self._waiters: list[Any] = []  # asyncio futures of the requests waiting (add_waiter)

    def add_waiter(self, future: Any) -> None:
        if self.released:
            future.set_result(None)
        else:
            self._waiters.append(future)

    def release(self, at: float) -> None:
        self.released = True
        for record in self.records:
            if not record.sent:
                record.sent = at
        for future in self._waiters:
            if not future.done():
                future.set_result(None)
        self._waiters.clear()


def _free_step_tokens(stream_ktokens: float, chunk_tokens: int) -> int:
    """The budget left free in the last step of a prefill stream of `stream_ktokens` k prompt
    tokens, cut into steps of `chunk_tokens`: 0 when it ends on a step boundary, or without a
    budget (chunk_tokens <= 0)."""
    if chunk_tokens <= 0:
        return 0
    used = round(stream_ktokens * 1000.0) % chunk_tokens
    return chunk_tokens - used if used else 0


def expected_output_tokens(request: LLMRequest) -> int:
    """The decode tokens a request is expected to produce: its max_tokens, else a default."""
    max_tokens = request.max_tokens
    return max_tokens if max_tokens is not None and max_tokens >= 0 else DEFAULT_OUTPUT_TOKENS


def latency_runtime(services: MutableMapping[str, Any]) -> LatencyRuntime:
    """The process's LatencyRuntime, created in `services` on first use."""
    runtime = services.get(SERVICE_KEY)
    if runtime is None:
        runtime = services[SERVICE_KEY] = LatencyRuntime()
        runtime.register_metrics(services)
    if not isinstance(runtime, LatencyRuntime):
        raise TypeError(f"services[{SERVICE_KEY!r}] holds {type(runtime).__name__}, not LatencyRuntime")
    return runtime
