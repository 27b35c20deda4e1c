"""Replay a decision trace against fresh simulated pods, for one scheduler config.

Design (why in-process, why virtual time):
- The real scheduler is built from the config by the same loader `epp serve` uses, with the
  same in-flight ledger, and decides on the same datastore types; only Envoy and the sockets
  are left out. They do not change which pod is picked, and without them a replay is
  deterministic and runs faster than real time, which `epp tune` needs.
- The pods are epp.sim's SimEngine (the continuous-batching, prefix-cached vLLM model the
  simulator serves over HTTP). The replay drives the engine's own step functions
  (`_schedule`, `_step_seconds`, `_complete_step`, the code its asyncio loop runs) from a
  discrete-event loop with a virtual clock, so an hour of traffic takes seconds and no
  timing noise of the machine enters the results.
- The EPP sees the pods as it does live: their queue, running count and KV-cache use are
  "scraped" every `scrape_interval_s` of virtual time; its own in-flight ledger moves at
  dispatch and completion, on the virtual clock.
- Prompts: the trace holds the prefix-cache scorer's chained block hashes, not the text.
  Each recorded block becomes a synthetic block (text for the EPP's prefix scorer, token ids
  for the simulator's KV cache) derived from its hash, and the rest of the prompt is filled
  with text unique to the request. Two recorded prompts that shared their first k blocks
  share exactly their first k synthetic blocks, so prefix affinity and cache hits replay.
  Traces recorded with --record-prompts replay the real text.
- Determinism: the pickers' random tie-break is seeded (`seed`), the simulated pods are
  seeded from their hostports, and everything else is a function of the trace. Given the
  recorded config, the same simulator state and the seed the recording EPP used, the
  replay makes the recorded picks (tests/unit/replay/test_record_replay.py). A live EPP's
  tie-breaks are not seeded: `follow_ties` (on for `--config recorded`) makes a
  max-score-picker take the recorded pick whenever it is among the best-scored endpoints.

Not modelled: admission control / flow control (every recorded request is routed), the
precise prefix-cache scorer (it needs the pods' KV events), request cancellations, and
output lengths other than max_tokens (or the profile's output_len_dist).
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

from prometheus_client import CollectorRegistry

from epp.bench.stats import Distribution
from epp.config.loader import SchedulerConfig, parse_scheduler_config
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import ROLE_LABEL, Endpoint
from epp.datastore.inflight import SERVICE_KEY as INFLIGHT_KEY
from epp.datastore.inflight import Dispatch, InflightConfig, InflightTracker
from epp.headers import OBJECTIVE
from epp.replay.profile import SimProfile
from epp.replay.trace import Trace, TraceRecord
from epp.scheduling.interfaces import Picker
from epp.scheduling.plugins.pd_metrics import register_pd_metrics
from epp.scheduling.plugins.prefix_cache_scorer import AVERAGE_CHARACTERS_PER_TOKEN
from epp.scheduling.registry import PluginContext
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, SchedulingError, ScoredEndpoint
from epp.sim.engine import RequestRejected, SimEngine, SimRequest, _StepPlan
from epp.sim.metrics import VllmMetrics
from epp.tokenization.tokenizer import SimpleTokenizer

UNSUPPORTED_PLUGINS = {
    "precise-prefix-cache-scorer": "it scores from the pods' KV events, which simulated replay pods do not publish",
}
# Event kinds, in the order they run at equal times: a finished step frees capacity before
# a scrape reads the pods, and both before a new request is decided.
_STEP, _ENQUEUE, _SCRAPE, _ARRIVE = 0, 1, 2, 3
GIVE_UP_AFTER_S = 3600.0  # virtual seconds after the last arrival before stuck requests are cut


class ReplayError(ValueError):
    """A trace or config that cannot be replayed (names the file and the reason)."""


@dataclass(slots=True)
class PodStats:
    hostport: str
    requests: int = 0  # decode (or single-role) picks
    prefills: int = 0  # picked as the P/D prefill pod
    prompt_tokens: int = 0
    cached_tokens: int = 0


@dataclass(slots=True)
class ReplayResult:
    """What one config did with the trace (latencies in simulated seconds)."""

    name: str
    config_source: str
    requests: int
    completed: int
    errors: dict[str, int]
    ttft: Distribution
    e2e: Distribution
    hit_rate: float  # prompt tokens served from the simulated prefix caches / all prompt tokens
    pods: list[PodStats]
    # CPU time of schedule + pre_request per decision, microseconds (thread CPU time: on a
    # shared machine wall time would mostly measure the other processes)
    decision_us: Distribution
    picks_compared: int  # decisions whose recorded pick could be compared
    picks_matched: int
    rate_scale: float
    virtual_s: float  # simulated time from the first arrival to the last completion
    wall_s: float  # how long the replay took
    mismatches: list[tuple[str, str, str]] = field(default_factory=list)  # (request id, recorded, replayed)
    ties: int = 0  # decisions with several best-scored endpoints (when following recorded ties)
    ties_followed: int = 0  # ... of which the recorded pick was among the best

    @property
    def balance(self) -> float:
        """max / mean of requests per pod (1.0 = perfectly even)."""
        counts = [p.requests for p in self.pods]
        mean = sum(counts) / len(counts) if counts else 0.0
        return max(counts) / mean if mean > 0 else math.nan

    @property
    def balance_cv(self) -> float:
        counts = [p.requests for p in self.pods]
        if not counts:
            return math.nan
        mean = sum(counts) / len(counts)
        if mean == 0:
            return math.nan
        return math.sqrt(sum((c - mean) ** 2 for c in counts) / len(counts)) / mean

    @property
    def pick_agreement(self) -> float:
        return self.picks_matched / self.picks_compared if self.picks_compared else math.nan


@dataclass(slots=True, eq=False)
class _Flight:
    """One replayed request from decision to completion."""

    index: int
    request: LLMRequest
    target: _Pod
    prefill: _Pod | None
    dispatch: Dispatch
    arrival: float
    tokens: list[int]
    first_token: float | None = None
    done: float | None = None
    cached_tokens: int = 0


@dataclass(slots=True, eq=False)
class _Pod:
    endpoint: Endpoint
    engine: SimEngine
    stats: PodStats
    overhead_s: float
    plan: _StepPlan | None = None  # the step in flight


class _NullSeries:
    """Stands in for every Prometheus series of a replayed engine: the replay reads the
    engine's state directly, and updating real series was a quarter of a replay's time."""

    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def __getitem__(self, key: str) -> _NullSeries:
        return self


class _NullMetrics:
    __slots__ = ()
    _series = _NullSeries()

    def __getattr__(self, name: str) -> _NullSeries:
        return self._series

    def set_lora_info(self, running: list[str], waiting: list[str]) -> None:
        pass


class _FollowRecordedTies:
    """Wraps a profile's max-score-picker: when several endpoints share the best score and
    the recording picked one of them, pick that one. The recording EPP broke such ties at
    random; following its choices replays the recording's randomness instead of inventing
    new randomness (a tie broken differently relabels every later decision of a sticky
    prefix group). Decisions that are not ties are the config's own, untouched."""

    __slots__ = ("inner", "name", "profile", "replayer")
    type_name: ClassVar[str] = "max-score-picker"  # the only picker it wraps

    def __init__(self, inner: Picker, profile: str, replayer: Replayer) -> None:
        self.inner = inner
        self.profile = profile
        self.replayer = replayer
        self.name = inner.name

    def pick(self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]) -> ProfileRunResult:
        rec = self.replayer.current
        want = rec.picks.get(self.profile) if rec is not None else None
        if want and len(scored) > 1:
            best = max(s.score for s in scored)
            ties = [s for s in scored if s.score == best]
            if len(ties) > 1:
                self.replayer.ties += 1
                for s in ties:
                    if s.endpoint.hostport == want:
                        self.replayer.ties_followed += 1
                        return ProfileRunResult(targets=[s.endpoint])
        return self.inner.pick(state, request, scored)


class _Clock:
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def split_hostport(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ReplayError(f"recorded pod {hostport!r} is not host:port")
    return host.strip("[]"), int(port)


def _token_block(h: int, n: int) -> list[int]:
    """n token ids derived from a 64-bit block hash (splitmix-style mixing, no RNG object)."""
    out = []
    x = h & 0xFFFFFFFFFFFFFFFF
    for _ in range(n):
        x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        out.append(((z ^ (z >> 27)) >> 40) % 30000 + 1000)
    return out


class SyntheticPrompts:
    """Prompt text (for the EPP) and token ids (for the simulator) with the recorded sharing."""

    def __init__(self, tokenizer: SimpleTokenizer | None = None) -> None:
        self._tokenizer = tokenizer or SimpleTokenizer()
        self._blocks: dict[tuple[int, int], list[int]] = {}

    def make(self, index: int, rec: TraceRecord) -> tuple[str, list[int]]:
        if rec.prompt is not None:
            return rec.prompt, self._tokenizer.encode(rec.prompt) or [1]
        chars = max(1, rec.prompt_chars)
        n_tokens = max(1, rec.prompt_tokens or math.ceil(chars / AVERAGE_CHARACTERS_PER_TOKEN))
        size = rec.prefix_block_size
        hashes = rec.prefix_hashes if size > 0 else []
        tokens_per_block = max(1, size // AVERAGE_CHARACTERS_PER_TOKEN)
        parts: list[str] = []
        ids: list[int] = []
        for h in hashes:
            parts.append((f"{h:016x}" * (size // 16 + 1))[:size])
            block = self._blocks.get((h, tokens_per_block))
            if block is None:
                block = self._blocks[(h, tokens_per_block)] = _token_block(h, tokens_per_block)
            ids += block
        tail = chars - size * len(hashes)
        if tail > 0:
            unique = f"~r{index:x}~"
            parts.append((unique * (tail // len(unique) + 1))[:tail])
        if len(ids) < n_tokens:
            ids += _token_block((index + 1) * 0x2545F4914F6CDD1D, n_tokens - len(ids))
        else:
            del ids[n_tokens:]
        return "".join(parts), ids


def build_scheduler(config_text: str, source: str, datastore: Datastore, tracker: InflightTracker,
                    seed: int) -> SchedulerConfig:
    """The scheduler exactly as `epp serve` builds it, with seeded tie-breaks."""
    ctx = PluginContext(datastore, source=source)
    ctx.services[INFLIGHT_KEY] = tracker
    registry = CollectorRegistry()
    ctx.services["metrics.registry"] = registry
    register_pd_metrics(registry, ctx.services)
    cfg = parse_scheduler_config(config_text, ctx, source)
    for name, plugin in cfg.plugins.items():
        why = UNSUPPORTED_PLUGINS.get(getattr(plugin, "type_name", ""))
        if why is not None:
            raise ReplayError(f"{source}: plugin {name!r} cannot be replayed: {why}")
    seed_pickers(cfg, seed)
    return cfg


def follow_recorded_ties(cfg: SchedulerConfig, replayer: Replayer) -> None:
    for name, profile in cfg.scheduler.profiles.items():
        picker = profile.picker
        params = getattr(picker, "params", None)
        if picker.type_name == "max-score-picker" and getattr(params, "max_num_of_endpoints", 1) == 1:
            profile.picker = _FollowRecordedTies(picker, name, replayer)


def seed_pickers(cfg: SchedulerConfig, seed: int) -> None:
    """Give every plugin with a random tie-break its own seeded generator (by plugin name, so
    adding a plugin does not shift the others' streams)."""
    for name, plugin in cfg.plugins.items():
        if isinstance(getattr(plugin, "rng", None), random.Random):
            plugin.rng = random.Random(f"{seed}/{name}")


class Replayer:
    """One replay of a trace with one config; `run()` returns the ReplayResult."""

    def __init__(self, trace: Trace, config_text: str, config_source: str, *, name: str = "",
                 profile: SimProfile | None = None, rate_scale: float = 1.0, seed: int = 0,
                 inflight: InflightConfig | None = None, follow_ties: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> None:
        if rate_scale <= 0:
            raise ReplayError(f"--rate-scale must be > 0, got {rate_scale}")
        self.trace = trace
        self.name = name or config_source
        self.config_source = config_source
        self.profile = profile or SimProfile()
        self.rate_scale = rate_scale
        self.progress = progress
        self.clock = _Clock()
        self.datastore = Datastore()
        self.tracker = InflightTracker(self.datastore, inflight, clock=self.clock)
        self.pods: dict[str, _Pod] = {}
        tokenizer = SimpleTokenizer()
        for index, info in enumerate(trace.pods):
            host, port = split_hostport(info.hostport)
            namespace, _, pod_name = info.key.rpartition("/")
            labels = {ROLE_LABEL: info.role} if info.role != "both" else {}
            ep = self.datastore.upsert_endpoint(Endpoint(name=pod_name or info.hostport, address=host, port=port,
                                                         namespace=namespace or "default", labels=labels))
            pod_cfg = self.profile.pod_config(index, info.hostport)
            pod_cfg.port = port
            pod_cfg.role = info.role
            engine = SimEngine(pod_cfg, tokenizer, cast(VllmMetrics, _NullMetrics()), None)
            ep.metrics.block_size = pod_cfg.block_size
            ep.metrics.num_gpu_blocks = pod_cfg.num_gpu_blocks
            self.pods[info.hostport] = _Pod(ep, engine, PodStats(info.hostport),
                                            pod_cfg.latency.frontend_overhead_ms / 1000.0)
        self._by_endpoint = {id(p.endpoint): p for p in self.pods.values()}
        self.sched = build_scheduler(config_text, config_source, self.datastore, self.tracker, seed)
        self.current: TraceRecord | None = None  # the record being decided (for tie following)
        self.ties = self.ties_followed = 0
        if follow_ties:
            follow_recorded_ties(self.sched, self)
        self.prompts = SyntheticPrompts(tokenizer)
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._flights: dict[int, tuple[_Flight, bool]] = {}  # id(SimRequest) -> (flight, is_prefill)

    # --- the event loop ---------------------------------------------------------------------
    def _push(self, at: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, kind, self._seq, payload))

    def run(self) -> ReplayResult:
        started = time.perf_counter()
        records = self.trace.records
        t0 = records[0].time
        for i, rec in enumerate(records):
            self._push((rec.time - t0) / self.rate_scale, _ARRIVE, i)
        last_arrival = (records[-1].time - t0) / self.rate_scale
        self._scrape()
        self._push(self.profile.scrape_interval_s, _SCRAPE, None)
        self._errors: dict[str, int] = {}
        self._decision_s: list[float] = []
        self._ttft: list[float] = []
        self._e2e: list[float] = []
        self._compared = self._matched = 0
        self._mismatches: list[tuple[str, str, str]] = []
        self._open = 0
        self._last_done = 0.0
        deadline = last_arrival + GIVE_UP_AFTER_S
        heap = self._heap
        done_arrivals = 0
        while heap:
            at, kind, _, payload = heapq.heappop(heap)
            if at > deadline:
                break
            self.clock.now = at
            if kind == _STEP:
                self._on_step(payload)
            elif kind == _ENQUEUE:
                pod, req = payload
                pod.engine.waiting.append(req)
                pod.engine.total_requests += 1
                self._kick(pod)
            elif kind == _SCRAPE:
                self._scrape()
                if len(heap) > 0:  # only scrapes left: the replay is over
                    self._push(at + self.profile.scrape_interval_s, _SCRAPE, None)
            else:
                self._on_arrival(payload, records[payload])
                done_arrivals += 1
                if self.progress is not None and done_arrivals % 1000 == 0:
                    self.progress(done_arrivals, len(records))
        if self._open:
            self._errors["unfinished"] = self._open
        completed = len(self._e2e)
        prompt = sum(p.stats.prompt_tokens for p in self.pods.values())
        cached = sum(p.stats.cached_tokens for p in self.pods.values())
        return ReplayResult(
            name=self.name, config_source=self.config_source, requests=len(records), completed=completed,
            errors=dict(sorted(self._errors.items())), ttft=Distribution.of(self._ttft),
            e2e=Distribution.of(self._e2e), hit_rate=cached / prompt if prompt else math.nan,
            pods=[p.stats for p in self.pods.values()],
            decision_us=Distribution.of([s * 1e6 for s in self._decision_s]),
            picks_compared=self._compared, picks_matched=self._matched, rate_scale=self.rate_scale,
            virtual_s=self._last_done, wall_s=time.perf_counter() - started,
            mismatches=self._mismatches[:20], ties=self.ties, ties_followed=self.ties_followed)

    def _scrape(self) -> None:
        now = self.clock.now
        for pod in self.pods.values():
            m = pod.endpoint.metrics
            eng = pod.engine
            m.waiting_queue_size = len(eng.waiting)
            m.running_requests = len(eng.running)
            m.kv_cache_usage = eng.pool.usage()
            m.updated_at = now

    # --- requests -----------------------------------------------------------------------------
    def _on_arrival(self, index: int, rec: TraceRecord) -> None:
        text, token_ids = self.prompts.make(index, rec)
        headers = {OBJECTIVE: rec.objective} if rec.objective else {}
        request = LLMRequest(
            request_id=rec.request_id or f"replay-{index}", model=rec.model,
            target_model=rec.target_model or rec.model, path=rec.path, prompt=text,
            stream=rec.stream, max_tokens=rec.max_tokens, priority=rec.priority, headers=headers,
            body={"cache_salt": rec.cache_salt} if rec.cache_salt else {},
        )
        scheduler = self.sched.scheduler
        self.current = rec
        t0 = time.thread_time()
        try:
            result, state = scheduler.schedule(request, self.datastore.healthy_endpoints())
        except SchedulingError as e:
            self._errors[e.code] = self._errors.get(e.code, 0) + 1
            return
        scheduler.pre_request(state, request, result)
        self._decision_s.append(time.thread_time() - t0)
        primary = result.primary
        assert primary is not None and primary.targets  # Scheduler.schedule guarantees it
        target = self._by_endpoint[id(primary.targets[0])]
        prefill: _Pod | None = None
        for profile, res in result.profile_results.items():
            if profile != result.primary_profile and res is not None and res.targets:
                prefill = self._by_endpoint[id(res.targets[0])]
                break
        if rec.picks:
            self._compared += 1
            recorded_prefill = rec.prefill
            if target.stats.hostport == rec.target and \
                    (prefill.stats.hostport if prefill else None) == recorded_prefill:
                self._matched += 1
            elif len(self._mismatches) < 20:
                self._mismatches.append((request.request_id, rec.target, target.stats.hostport))
        targets = [target.endpoint] + ([prefill.endpoint] if prefill is not None else [])
        chars = len(text)
        dispatch = self.tracker.dispatch(targets, self.tracker.estimate_tokens(chars, rec.max_tokens),
                                         self.tracker.estimate_tokens(chars, 0))
        flight = _Flight(index, request, target, prefill, dispatch, self.clock.now, token_ids)
        target.stats.requests += 1
        target.stats.prompt_tokens += len(token_ids)
        self._open += 1
        if prefill is not None:
            prefill.stats.prefills += 1
            self._submit(flight, prefill, is_prefill=True)
        else:
            self._submit(flight, target, is_prefill=False)

    def _submit(self, flight: _Flight, pod: _Pod, is_prefill: bool) -> None:
        rec_max = flight.request.max_tokens
        params: dict[str, Any] | None = None
        if is_prefill:
            rec_max, params = 1, {"do_remote_decode": True}
        elif flight.prefill is not None:
            params = {"do_remote_prefill": True}
        salt = flight.request.body.get("cache_salt")
        try:
            req = pod.engine.make_request(f"{flight.request.request_id}{'-p' if is_prefill else ''}",
                                          list(flight.tokens), rec_max, cache_salt=salt,
                                          kv_transfer_params=params, arrival=self.clock.now)
        except RequestRejected:
            self._errors["rejected_by_pod"] = self._errors.get("rejected_by_pod", 0) + 1
            self._finish(flight, ok=False)
            return
        self._flights[id(req)] = (flight, is_prefill)
        self._push(self.clock.now + pod.overhead_s, _ENQUEUE, (pod, req))

    def _kick(self, pod: _Pod) -> None:
        """Start the pod's next engine step if it is idle and has work (its loop's body)."""
        if pod.plan is not None:
            return
        engine = pod.engine
        while engine.waiting or engine.running:
            plan = engine._schedule()
            if plan.items:
                pod.plan = plan
                self._push(self.clock.now + engine._step_seconds(plan), _STEP, pod)
                return
            if not plan.preempted:
                return  # nothing fits: wait for a change (a finishing request or a new one)

    def _on_step(self, pod: _Pod) -> None:
        plan = pod.plan
        assert plan is not None
        pod.plan = None
        pod.engine._complete_step(plan)
        now = self.clock.now
        for req, _ in plan.items:
            entry = self._flights.get(id(req))
            if entry is None:
                continue
            flight, is_prefill = entry
            if req.output_token_ids and not is_prefill and flight.first_token is None:
                flight.first_token = now
            if req.finished:
                del self._flights[id(req)]
                self._on_engine_done(flight, pod, req, is_prefill)
        self._kick(pod)

    def _on_engine_done(self, flight: _Flight, pod: _Pod, req: SimRequest, is_prefill: bool) -> None:
        if is_prefill:
            flight.cached_tokens = req.cached_tokens
            pod.stats.cached_tokens += req.cached_tokens
            self._submit(flight, flight.target, is_prefill=False)
            return
        if flight.prefill is None:
            flight.cached_tokens = req.cached_tokens
            pod.stats.cached_tokens += req.cached_tokens
        response = {"status": 200, "prompt_tokens": len(flight.tokens),
                    "completion_tokens": len(req.output_token_ids)}
        self._finish(flight, ok=True, response=response)

    def _finish(self, flight: _Flight, ok: bool, response: dict[str, Any] | None = None) -> None:
        now = self.clock.now
        self._open -= 1
        self.tracker.complete(flight.dispatch)
        self.sched.scheduler.post_response(flight.request, flight.target.endpoint,
                                           response or {"status": 400})
        if ok:
            self._e2e.append(now - flight.arrival)
            if flight.first_token is not None:
                self._ttft.append(flight.first_token - flight.arrival)
            self._last_done = max(self._last_done, now)


def replay(trace: Trace, config_text: str, config_source: str, **kwargs: Any) -> ReplayResult:
    return Replayer(trace, config_text, config_source, **kwargs).run()
