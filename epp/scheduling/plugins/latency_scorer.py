"""latency-scorer: rank pods by predicted latency headroom against the request's SLO.

After llm-d's `latency-scorer` (pkg/epp/framework/plugins/scheduling/scorer/latency): when
some pods meet both targets and others do not, only those that meet them score above 0.
Among pods that meet the SLO, `headroomSelectionStrategy` picks the shape: `most` (our
default) prefers the most headroom, `least` (llm-d's default) the least, packing requests
onto busier pods to keep idle ones for tight SLOs. We default to `most` because the
predictions are ~10-20% off (docs/latency-routing.md): packing onto the boundary turns that
error into SLO misses. Pods that all miss the SLO are ranked by least deficit, i.e. lowest
predicted latency.

How TTFT and TPOT are blended differs from llm-d's: llm-d min-max normalises each
dimension's headroom over the candidates and blends them with `ttftWeight` / `tpotWeight`,
which gives a TPOT spread of 3% the same pull as a TTFT spread of 300%. For a long prefill
(a 6 s prefill, then 32 tokens of decode) the TPOT spread is mostly prediction noise, and it
outvoted the TTFT ranking: the benchmark's long prefills went to the pod with the most
prefill work queued (docs/latency-routing.md, "Long prefills"). Here each candidate's cost
is `ttftWeight x TTFT / ref + tpotWeight x TPOT / ref`, the references being the request's
targets (a dimension without target next to one with a target does not count), and the
costs are normalised once, so the weights act on comparable, magnitude-keeping units. The
normalisation is min-max over a span of at most the best cost: a pod twice as costly as the
best, or worse, scores 0, and one far-off pod (the slow pod, for a long prompt) does not
squeeze the rest into 0.97-1.0, where the profile's weaker scorers decided between pods
seconds of queue apart (docs/latency-routing.md, "Scores between the fast pods").

A request without any target (scored only with the producer's `scoreRequestsWithoutSLO`)
is ranked, with `withoutSLO: latency` (the default), on its predicted time in seconds,
`ttftWeight x TTFT + tpotWeight x (output tokens - 1) x TPOT` (the expected output tokens
are its max_tokens), so TPOT weighs what it costs the request: little for a long prompt with
a short answer, most of it for a short prompt with a long answer. That TPOT is predicted for
the pod's state when the request's decode starts (`LatencyPredictor.decode_tpot`: the
prefills queued ahead of it done), not for the state now. With `withoutSLO: ttft`,
on its predicted TTFT alone (the earliest first byte; in the benchmark this sent long
prompts to the slow pod, whose chats then stalled: docs/latency-routing.md). llm-d ranks such a
request as if its targets were 0, by the lowest blended latency; blending TPOT relative to
the best pod's TPOT (our first version) gave a pod decoding 2x slower the pull of a prefill
2x slower, so long prompts that decode 32 tokens avoided pods with busy decode batches at
the price of seconds of prefill queue (docs/latency-routing.md, "Requests without SLO").

`runningTpotWeight` (off by default) adds, per candidate, the decode stall the request's
prefill would cause there: weight x its predicted prefill time x the in-flight requests on
that pod whose TPOT target the stall would break and is not broken already by the prefills
dispatched there after it (after llm-d's guard of running requests' TPOT SLOs;
docs/latency-routing.md, "Running requests' TPOT").

`queueHarmWeight` (off by default) adds, per candidate, the wait the request's prefill would
add for the requests that arrive behind it at that pod: weight x its predicted service time
there x the requests expected to arrive there meanwhile (the pool's recent dispatch rate per
candidate x the same service time), over the fastest candidate's, and counting service times
within 25% of the fastest's as equal to it (the learned speeds of equal pods differ by that
much; squared, the noise outweighed real queue differences). Greedy ranking on the request's
own latency ignores that cost: in the benchmark a long prompt sent to the slow pod, because it
finished there about as early as on a busy fast pod, stalled the chats that pod served
(docs/latency-routing.md, "Queue harm"). The rate is the pool's mean, not the pod's own: with each pod's own rate, pods
that served chats repelled long prompts, which then piled onto the few pods that had taken
them before (the measured first version).

`lastChunkHarmWeight` (off by default) adds, per candidate, the delay the request's prefill
would deal the request queued last there: vLLM fills each step's token budget
(`maxNumBatchedTokens`, the pods' max_num_batched_tokens) first-come first-served, so the step
that finishes that request's prefill also starts the new one's, and lasts as much longer as
the new tokens it takes, up to the budget's free part (LatencyRuntime.last_chunk_free_tokens).
A long prompt queued behind another long prefill delays its first token by up to one full
step (1.8 s on a bench pod): in the benchmark several of the slowest long prefills had found
their pod free and lost that step to the next one sent there. Weight x those seconds (the
predictor's marginal prefill time of the tokens), in the request's own cost units. Measured,
it made the attainment steadier across seeds, not the long prefills' p90: the stall cost,
which protects running chats' TPOT, still sends the next long prompt behind them
(docs/latency-routing.md, "The last prefill step"). `maxNumBatchedTokens` also tells the
runtime's virtual queue how much of the next prompt a pod's last prefill step carries
(LatencyRuntime._carried_over), whatever the weight.

`withoutSLOMaxTtftRatio` (off by default) bounds what those two costs, paid for other
requests, can make a request without any target wait: candidates predicted to give it a TTFT
above that multiple of the best candidate's score 0. A request with targets is bounded by its
SLO tier instead (docs/latency-routing.md, "A bound on the wait of requests without SLO").

`maxExtraTtftSeconds` (off by default) is a bound in seconds, for every request scored: among
the candidates left (those meeting the SLO, when any does), those predicted to give it a TTFT
more than that many seconds above the best one's score 0. The costs paid for others, and a
lenient target, can send a long prompt behind seconds of queue; the long prompts' TTFT tail is
made of such waits, and a ratio or a share of the target bounds the largest prompts least, in
seconds. A chat's predicted TTFTs seldom differ by a second, so it is seldom bound
(docs/latency-routing.md, "A bound in seconds").

Before the predictor is trained, and for requests without SLO (unless the producer's
`scoreRequestsWithoutSLO`), every pod scores 0, so the profile's other scorers decide exactly
as they would without this one (the fallback).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from epp.datastore.endpoint import Endpoint
from epp.latency.runtime import CyclePredictions, LatencyRuntime, expected_output_tokens, latency_runtime
from epp.latency.slo import SLO
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CycleState, LLMRequest

_MIN_REFERENCE_S = 0.001  # floor of a reference latency (a 0 s prediction would divide by 0)
# queueHarmWeight: each candidate's service time is reduced by this fraction of the fastest
# candidate's (not below it) before the harm is computed: the speed error on equal pods.
_HARM_SPEED_TOLERANCE = 0.25


def _has_nan(values: Sequence[float]) -> bool:
    """Whether any of `values` is NaN. A sum is NaN when one is (or when +inf meets -inf, which
    the exact test then tells apart): at 64 candidates a third of the cost of testing each."""
    total = sum(values)
    return total != total and any(map(math.isnan, values))


def _relative_costs(preds: Sequence[tuple[float, float]], slo_ttft: float | None, slo_tpot: float | None,
                    w_ttft: float, w_tpot: float, output_tokens: int | None) -> list[float]:
    """The blended cost of each candidate. With targets: w_ttft x TTFT / target + w_tpot x
    TPOT / target, a dimension without target not counting (relative to the best pod, a
    dimension the request asked nothing of would outweigh the one it did). Unlike
    per-dimension min-max normalisation this keeps the magnitudes: a TPOT spread of a few
    percent no longer weighs as much as a TTFT spread of several seconds. Without any target:
    seconds, w_ttft x TTFT + w_tpot x (output_tokens - 1) x TPOT, the TPOT term being the
    decode time the request will spend after its first token (output_tokens None: TTFT
    alone). A dimension whose predictions are unknown (NaN) or all equal contributes
    nothing."""
    if not preds:
        return []
    has_slo = slo_ttft is not None or slo_tpot is not None
    decode_steps = max(0, output_tokens - 1) if output_tokens is not None else 0
    # One pass over the candidates, in C, splits the two dimensions.
    columns = tuple(zip(*preds, strict=True))
    scales = [0.0, 0.0]
    for dim, slo, weight in ((0, slo_ttft, w_ttft), (1, slo_tpot, w_tpot)):
        if weight <= 0.0 or (has_slo and slo is None):
            continue  # a request with targets is ranked on the dimensions it has targets for
        values = columns[dim]
        if _has_nan(values) or values.count(values[0]) == len(values):  # (all equal)
            continue
        # With a target: units of the target. Without: seconds of the request's own time.
        per_unit = 1.0 / max(slo, _MIN_REFERENCE_S) if slo is not None else float(decode_steps if dim else 1)
        scales[dim] = weight * per_unit if per_unit > 0.0 else 0.0
    a, b = scales
    if a > 0.0 and b > 0.0:
        return [a * ttft + b * tpot for ttft, tpot in preds]
    if a > 0.0:
        return [a * ttft for ttft in columns[0]]
    if b > 0.0:
        return [b * tpot for tpot in columns[1]]
    return [0.0] * len(preds)


def _seconds_to_cost(slo: SLO, output_tokens: int) -> float:
    """The request's cost units per second of someone else's time: over its TTFT target,
    over its decode-time target (TPOT target x decode steps) when it has only a TPOT target,
    seconds without targets."""
    if slo.ttft_s is not None:
        return 1.0 / max(slo.ttft_s, _MIN_REFERENCE_S)
    if slo.tpot_s is not None:
        return 1.0 / max(slo.tpot_s * max(1, output_tokens - 1), _MIN_REFERENCE_S)
    return 1.0


@register_plugin
class LatencyScorer:
    type_name: ClassVar[str] = "latency-scorer"
    consumes: ClassVar[tuple[str, ...]] = ("latency.predictions",)

    @dataclass(slots=True)
    class Params:
        ttft_weight: float = 0.8
        tpot_weight: float = 0.2
        headroom_selection_strategy: Literal["most", "least"] = "most"
        # A request without any target: "latency" ranks on ttftWeight x TTFT + tpotWeight x
        # its decode seconds, "ttft" on predicted TTFT alone (see the module docstring).
        without_slo: Literal["ttft", "latency"] = "latency"
        # Cost of the decode stall the request's prefill would cause on a pod, per in-flight
        # request there whose TPOT target the stall would break: this weight x the predicted
        # prefill seconds, in the request's own cost units (see _add_stall_costs). Off (0) by
        # default, on (1.0) in the bench's profile: it trades the long prompts' own TTFT (they
        # queue on pods without TPOT-SLO chats) for the running chats' TPOT targets; at the
        # bench's 90% load, +8-25 points of attainment for a long-prefill TTFT p90 0.90-1.23x
        # the default config's instead of 1.43-1.60x (docs/latency-routing.md, "The load was
        # 114%"); with withoutSLOMaxTtftRatio 1.25, 1.35-1.43x.
        running_tpot_weight: float = 0.0
        # Cost of the wait the request's prefill adds for the requests arriving behind it on a
        # pod: this weight x service time x (the pool's dispatch rate per candidate x service
        # time), in the request's own cost units (see _add_queue_harm_costs). 0.5 charges the
        # expected total wait (each of them waits about half the service time). Off (0) by
        # default.
        queue_harm_weight: float = 0.0
        # A request without any target: candidates predicted to give it a TTFT above this
        # multiple of the best candidate's score 0 (0: off). It bounds what the stall and
        # queue-harm costs, paid for other requests' targets, can make such a request wait:
        # without it a long prompt without SLO queued behind seconds of prefill to spare a
        # pod's chats, and the long prompts' TTFT p90 paid (docs/latency-routing.md, "A bound
        # on the wait of requests without SLO"). A request with targets has its own bound:
        # the SLO tier.
        without_slo_max_ttft_ratio: float = 0.0
        # Every request scored: candidates predicted to give it a TTFT more than this many
        # seconds above the best candidate's (of its SLO tier) score 0 (0: off). At 1.0 in the
        # bench: long-prefill TTFT p90 1.44-1.49x the default config's instead of 1.38-1.40x,
        # for 1-8 points of attainment (docs/latency-routing.md, "A bound in seconds").
        max_extra_ttft_seconds: float = 0.0
        # Cost of the delay the request's prefill would deal the request queued last on a pod,
        # whose last prefill step it would share: this weight x the predictor's prefill seconds
        # of the tokens it adds to that step (see LatencyRuntime.last_chunk_free_tokens), in the
        # request's own cost units. Off (0) by default.
        last_chunk_harm_weight: float = 0.0
        # The pods' step token budget (vLLM's max_num_batched_tokens), for lastChunkHarmWeight
        # and for the runtime's virtual queue (the part of a prompt prefilled in the last step
        # of the one ahead of it).
        max_num_batched_tokens: int = 8192

        def validate(self) -> None:
            for label, value in (("ttftWeight", self.ttft_weight), ("tpotWeight", self.tpot_weight),
                                 ("runningTpotWeight", self.running_tpot_weight),
                                 ("queueHarmWeight", self.queue_harm_weight),
                                 ("lastChunkHarmWeight", self.last_chunk_harm_weight),
                                 ("maxExtraTtftSeconds", self.max_extra_ttft_seconds)):
                if not value >= 0 or math.isinf(value):
                    raise ValueError(f"parameter {label!r} must be a finite number >= 0, got {value}")
            ratio = self.without_slo_max_ttft_ratio
            if ratio != 0.0 and not (ratio >= 1.0 and not math.isinf(ratio)):
                raise ValueError(f"parameter 'withoutSLOMaxTtftRatio' must be 0 (off) or a finite number >= 1,"
                                 f" got {ratio}")
            if self.max_num_batched_tokens < 1:
                raise ValueError(f"parameter 'maxNumBatchedTokens' must be >= 1, got {self.max_num_batched_tokens}")
            if self.ttft_weight + self.tpot_weight <= 0:
                raise ValueError("parameters 'ttftWeight' and 'tpotWeight' cannot both be 0")

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        self.runtime: LatencyRuntime = latency_runtime(ctx.services if ctx is not None else {})
        # The runtime's virtual queue splits the steps by it too (LatencyRuntime._carried_over).
        self.runtime.chunk_tokens = self.params.max_num_batched_tokens

    def _add_queue_harm_costs(self, costs: list[float], cycle: CyclePredictions, services: Sequence[float],
                              output_tokens: int, candidates: int) -> None:
        """Add, per candidate, queueHarmWeight x s x (rate x s), s being the request's predicted
        service time on that pod (its prefill on an idle pod: how long it holds up the pod's
        prefill queue) and rate the pool's recent dispatch rate over the number of
        candidates: the requests expected to arrive behind it meanwhile, each waiting up to
        s. Charged over the fastest candidate's harm (which every candidate would cause), with
        s reduced by a tolerance of the fastest's s (not below it), so equal-speed pods get
        no cost (the queues decide between them) even when their learned speeds differ a
        little; a pod twice as slow for this prompt pays about 2x the fastest's own harm.
        Charged in the request's own cost units, like the stall costs."""
        runtime = self.runtime
        rate = runtime.dispatch_rate() / max(1, candidates)
        if not rate > 0.0:
            return
        scale = self.params.queue_harm_weight * _seconds_to_cost(cycle.slo, output_tokens) * rate
        known = [s for s in services if s == s] if _has_nan(services) else services
        if not known:
            return
        # The tolerance: the learned speeds of equal pods differ by ~10-20% (a pod serving more
        # decodes looks slower), and squared, that noise made costs larger than seconds of
        # queue difference between them. Over the fastest's: a shared offset ranks nothing,
        # and it would dilute the spread that score() normalises against the best cost.
        floor = min(known)
        tolerance = _HARM_SPEED_TOLERANCE * floor
        base = floor * floor
        for j, s in enumerate(services):
            s -= tolerance  # (NaN stays NaN, and is never above the floor)
            if s > floor:  # (below it: the fastest's own harm, which every candidate causes)
                costs[j] += scale * (s * s - base)

    def _add_stall_costs(self, costs: list[float], cycle: CyclePredictions, keys: Sequence[str],
                         services: Sequence[float], output_tokens: int) -> None:
        """Add, per candidate, runningTpotWeight x its predicted prefill time (service time on
        an idle pod: how long the running decodes there stall) x the number of in-flight
        requests there whose TPOT target that stall would break (not those that the prefills
        dispatched there since they started have pushed past it already: see
        LatencyRuntime.running_tpot_harm). Each of them loses about the stall's seconds, so it
        is charged like the request's own seconds: over its TTFT target when it has one, over
        its decode-time target (TPOT target x decode steps) when it has only a TPOT target, in
        seconds without targets."""
        scale = self.params.running_tpot_weight * _seconds_to_cost(cycle.slo, output_tokens)
        for j, harmed in self.runtime.running_tpot_harms(keys, services):
            costs[j] += scale * services[j] * harmed

    def _add_last_chunk_costs(self, costs: list[float], cycle: CyclePredictions, keys: Sequence[str],
                              output_tokens: int) -> None:
        """Add, per candidate, lastChunkHarmWeight x the seconds the request's prefill would add
        to the last prefill step of the request queued last there: the per-token time
        (LatencyPredictor.step_share) of the tokens it would take in that step (its new tokens,
        up to the step's free budget). Charged in the request's own cost units, like the stall
        costs."""
        runtime = self.runtime
        step_share = runtime.predictor.step_share
        chunk = self.params.max_num_batched_tokens
        scale = self.params.last_chunk_harm_weight * _seconds_to_cost(cycle.slo, output_tokens)
        pending = runtime.pending_count
        for j, key in enumerate(keys):
            # Without a pending request there is no last step to share (last_chunk_free_tokens).
            if not pending.get(key):
                continue
            free = runtime.last_chunk_free_tokens(key, chunk)
            if not free:
                continue
            delay = step_share(key, min(cycle.new_tokens(key), free / 1000.0))
            if delay > 0.0:
                costs[j] += scale * delay

    @staticmethod
    def _within_ttft_bound(ttfts: list[float], ratio: float, extra_s: float) -> list[int] | None:
        """The positions in `ttfts` (the tier's predicted TTFTs) of those at most `ratio` x the
        best one and at most `extra_s` above it (either 0: no such bound); None when that is
        all of them, or no TTFT is known."""
        known = [t for t in ttfts if t == t] if _has_nan(ttfts) else ttfts
        if not known:
            return None
        best = min(known)
        bound = min(ratio * best if ratio > 0.0 else math.inf, best + extra_s if extra_s > 0.0 else math.inf)
        if max(known) <= bound:
            return None
        kept = [j for j, t in enumerate(ttfts) if t != t or t <= bound]
        return kept if len(kept) != len(ttfts) else None

    def score(self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]) -> list[float]:
        n = len(endpoints)
        cycle = self.runtime.cycle(state, request, endpoints)
        if cycle is None:
            return [0.0] * n
        slo = cycle.slo
        by_key = cycle.by_key
        params = self.params
        ratio = params.without_slo_max_ttft_ratio if slo.empty else 0.0
        bounded = ratio > 0.0 or params.max_extra_ttft_seconds > 0.0
        if slo.empty:  # every candidate meets no targets, with infinite headroom
            tier, least = list(range(n)), False
            # The TTFT bound first: without targets it keeps a few of many candidates.
            kept = self._within_ttft_bound([by_key[ep.key][0] for ep in endpoints], ratio,
                                           params.max_extra_ttft_seconds) if bounded else None
            if kept is not None:
                tier = kept
            keys = [endpoints[i].key for i in tier]
            preds = [by_key[key] for key in keys]
        else:
            keys = [ep.key for ep in endpoints]
            preds = [by_key[key] for key in keys]
            meets = cycle.meeting_of(preds)
            if all(meets) or not any(meets):
                tier = list(range(n))
            else:
                tier = [i for i in range(n) if meets[i]]
                keys = [keys[i] for i in tier]
                preds = [preds[i] for i in tier]
            least = params.headroom_selection_strategy == "least" and any(meets)
            kept = self._within_ttft_bound([p[0] for p in preds], ratio,
                                           params.max_extra_ttft_seconds) if bounded else None
            if kept is not None:
                tier = [tier[j] for j in kept]
                keys = [keys[j] for j in kept]
                preds = [preds[j] for j in kept]
        output_tokens = expected_output_tokens(request)
        if slo.empty and params.without_slo == "ttft":
            costs = _relative_costs(preds, None, None, 1.0, 0.0, None)
        elif slo.empty:
            # Ranked on its own seconds: TTFT, then its decode, which starts after its first
            # token, when the prefills queued ahead of it there are done. On the TPOT of the
            # state now, a pod whose long-prefill queue had just cleared, still decoding chats,
            # looked seconds worse to a long prompt than a pod with seconds of prefill queued.
            decode_tpot = self.runtime.predictor.decode_tpot
            preds = [(ttft, decode_tpot(key, cycle.features_of(key)) if cycle.has_features(key) else tpot)
                     for key, (ttft, tpot) in zip(keys, preds, strict=True)]
            costs = _relative_costs(preds, None, None, params.ttft_weight, params.tpot_weight, output_tokens)
        else:
            costs = _relative_costs(preds, slo.ttft_s, slo.tpot_s, params.ttft_weight, params.tpot_weight,
                                    output_tokens)
        harm_costs = params.running_tpot_weight > 0.0 or params.queue_harm_weight > 0.0
        if params.last_chunk_harm_weight > 0.0:
            self._add_last_chunk_costs(costs, cycle, keys, output_tokens)
        if harm_costs:
            # Each candidate's service time (its prefill on an idle pod), shared by both costs.
            services = self.runtime.service_times(cycle, keys)
            if params.running_tpot_weight > 0.0:
                self._add_stall_costs(costs, cycle, keys, services, output_tokens)
            if params.queue_harm_weight > 0.0:
                self._add_queue_harm_costs(costs, cycle, services, output_tokens, n)
        low, high = min(costs), max(costs)
        span = high - low
        if not least and low > 0.0:
            # A candidate twice as costly as the best, or worse, scores 0. Plain min-max let
            # one outlier (the slow pod, at 10x) squeeze the others into 0.97-1.0, where the
            # weaker scorers decided between fast pods seconds of queue apart.
            span = min(span, low)
        if not span > 0:
            scores = [1.0] * len(tier)  # the tier is indistinguishable: all of it scores the same
        elif least:
            scores = [(c - low) / span for c in costs]  # closest to the SLO (all in the tier meet it)
        else:
            # Most headroom / least deficit; 0 from low + span on (one pass).
            scores = [v if (v := 1.0 - (c - low) / span) > 0.0 else 0.0 for c in costs]
        if len(tier) == n:
            return scores
        out = [0.0] * n
        for i, v in zip(tier, scores, strict=True):
            out[i] = v
        return out
