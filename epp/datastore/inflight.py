"""In-flight load the EPP tracks itself: requests and tokens per endpoint, live.

Scraped metrics are one scrape interval old (50 ms by default). A burst that arrives within
one interval sees every pod as it was before the burst, so a picker that reads only scraped
signals sends the whole burst to the pod that looked idlest (herding). The tracker is the
EPP's own ledger of what it sent where, updated in the same event-loop turn as the decision:

- `dispatch()` charges each target endpoint one request and the request's token estimate
  (prompt tokens + expected decode tokens) as soon as the server commits to the decision;
- `complete()` releases every charge of that request when its ext_proc stream ends (response
  finished, client gone, Envoy reset: the stream's `finally` always runs). It is idempotent.

Nothing may leak, so two more rules bound every charge:

- Expiry: a charge older than `request_timeout_s` is released by the periodic `sweep()` even
  if no completion ever came (llm-d's active-request scorer does the same with a 2 min TTL).
- Reconciliation with the scrape: when a pod's metrics are refreshed, the pod reports how
  many requests it holds (running + waiting). Every request we sent it more than
  `reconcile_grace_s` before that scrape must be among them, unless it already finished. So
  if our charges older than the grace outnumber the pod's own count, the surplus (oldest
  first) is released: the pod has finished them, and only their completion is still on its
  way (or was lost). Charges younger than the grace are kept: they may not have reached the
  pod yet when it was scraped. The pod's count includes other clients' and other EPP
  replicas' requests, which only makes the rule more conservative, never wrong.

The read-out lives on the Endpoint (`inflight`, `inflight_tokens`) so scorers read two ints
without a lookup; `peer_inflight` / `peer_inflight_tokens` hold what the other `--workers`
processes have in flight (epp.server.peers.InflightSharing), so a scorer sums both.
A restarted EPP starts from zero: the charges of its previous life are gone with it, and its
peers drop the counts of a worker they have not heard from for a few seconds.

Speed (`slowness()`): a pool may mix GPU types, and a pod that is 2x slower must get fewer
prompts than the others, or its queue grows while they idle. The EPP does not see first
tokens, but it sees how long each request stays in flight (dispatch to completion). Per
endpoint it keeps an average of seconds per unit of work, where a request's work is its
expected decode steps plus its prompt tokens / PROMPT_TOKENS_PER_STEP (one decode step costs
about as much engine time as prefilling ~100 prompt tokens: vLLM on an H100 runs 8B-model
decode steps of ~7-10 ms and prefills ~10-20k tokens/s). `sweep()` turns those averages
into a slowness factor per endpoint: its average over the pool's lower quartile, 1.0 below
SLOWNESS_DEAD_ZONE (a homogeneous pool's pods differ by noise and by the queueing the load
scorers already see; they must not be skewed by it), capped at SLOWNESS_CAP. The dead zone
only admits: a pod once judged slow keeps its measured ratio while that stays above
SLOWNESS_RELEASE (1.05), because in a burst the other pods queue too and its ratio dips
into the dead zone exactly when it must not get a full-speed share. Queueing is in
the measured time too, so a pod that is over capacity looks slower until its queue drains,
which moves load the same way. A pod far behind completes late, so completions alone would
tell too late: the age of its oldest open request over that request's work is a lower bound
of its time per work and counts as soon as it exceeds the average (the reference, the
lower quartile, comes from completions only: lower bounds would pull it down). Once a pod
has completions, that age counts only after an OPEN_AGE_MARGIN: the oldest of its open
requests is the longest-running of several, often well above the average by chance. A pod that
gets no traffic because it looked slow would keep that verdict forever, so an average
without new samples relaxes towards the reference (time constant SPEED_MEMORY_S): the pod is
tried again and measured anew.

Completions arrive late: a request is in flight for its whole decode, so a fresh EPP knows
no speeds for the first seconds and spreads that traffic speed-blind. When the pods export
the engine's inter-token latency histogram (vLLM's `vllm:inter_token_latency_seconds`,
scraped as `EndpointMetrics.itl_sum` / `itl_count`), the sweep also turns the growth of its
_sum and _count since the previous sweep into a recent mean time per decode step per pod,
kept as exponentially decayed sums (time constant ITL_WINDOW_S, so the mean weighs tokens,
not scrapes). The first samples come one decode step after a pod's first prefill, well
before its first completion. A slower GPU takes longer for every step (and for the prefills
that stall the decodes), so a pod's mean over the lower quartile of the pool's means is a
second slowness estimate; each pod's slowness is the larger of the two, through the same dead
zone and cap. A pod that exports no such histogram (another engine, an old vLLM) has no
step time and is judged by completions alone, as before; so are all pods when fewer than two
export it. The embedded default config leaves this signal off (prefill-load-scorer
`engineLatency: false`): on a homogeneous pool under load a pod that has just taken prompts
decodes in steps shared with their prefill chunks, so its step time rises with its recent
load and can exceed the dead zone, which moved load for nothing in side-by-side runs
(docs/scheduling.md, "Heterogeneous pools").
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from epp.aio import cancel_and_wait
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint

log = logging.getLogger(__name__)

SERVICE_KEY = "inflight.tracker"  # PluginContext.services key
CHARACTERS_PER_TOKEN = 4  # prompt-size estimate without a tokenizer (same as prefix-cache-scorer)
# Speed learning (see the module docstring, "Speed").
PROMPT_TOKENS_PER_STEP = 100  # prompt tokens whose prefill costs about one decode step
SPEED_SAMPLE_WEIGHT = 0.25  # weight of the newest completion in an endpoint's average
SPEED_MIN_SAMPLES = 1  # completions before an endpoint's speed counts (the dead zone absorbs odd ones)
SPEED_MEMORY_S = 30.0  # an average without new samples relaxes to the reference over this
SLOWNESS_DEAD_ZONE = 1.5  # slowness below this is noise: the endpoint counts as full speed
# An endpoint already judged slow keeps its measured ratio (not 1.0) while the ratio is at
# least this: the dead zone decides whether a pod is slow, not how slow it is from then on.
# Above 1.0 so that a pod whose verdict relaxes towards the reference is let go in finite time.
SLOWNESS_RELEASE = 1.05
SLOWNESS_CAP = 4.0  # an endpoint never counts as more than 4x slower (bounds one bad sample)
# The oldest open request is the longest-running of several: on a busy homogeneous pool it is
# often well above the average by chance. For an endpoint that has completions its age counts
# only after dividing by this margin; one that completed nothing yet is judged by it as is.
OPEN_AGE_MARGIN = 1.5
# Engine step time from the scraped inter-token latency histogram (see the docstring).
ITL_WINDOW_S = 3.0  # time constant of the decayed per-pod sums (wall seconds)
ITL_MIN_TOKENS = 4.0  # decayed token count before a pod's mean step time counts


@dataclass(slots=True)
class InflightConfig:
    """How the tracker charges and when it lets go (`epp serve --inflight-*` flags)."""

    request_timeout_s: float = 300.0  # a charge with no completion is released after this
    default_output_tokens: int = 256  # expected decode tokens when the request has no max_tokens
    reconcile_grace_s: float = 1.0  # charges younger than this are not reconciled with a scrape
    sweep_interval_s: float = 0.25  # how often expiry and reconciliation run
    prefill_window_s: float = 0.5  # time constant of the recent-prompt-tokens estimate

    def validate(self) -> None:
        if self.request_timeout_s <= 0:
            raise ValueError(f"--inflight-timeout must be > 0 s, got {self.request_timeout_s}")
        if self.default_output_tokens < 0:
            raise ValueError(f"--default-output-tokens must be >= 0, got {self.default_output_tokens}")
        if self.reconcile_grace_s < 0:
            raise ValueError(f"in-flight reconcile grace must be >= 0 s, got {self.reconcile_grace_s}")
        if self.sweep_interval_s <= 0:
            raise ValueError(f"in-flight sweep interval must be > 0 s, got {self.sweep_interval_s}")
        if self.prefill_window_s <= 0:
            raise ValueError(f"--prefill-window must be > 0 s, got {self.prefill_window_s}")


@dataclass(slots=True, eq=False)
class Charge:
    """One request's load on one endpoint (a P/D request charges its prefill and decode pods)."""

    endpoint: Endpoint
    tokens: int
    at: float  # clock() at dispatch
    released: bool = False
    prompt_tokens: int = 0


def _work(charge: Charge) -> float:
    """A request's engine work in decode steps: expected decode tokens plus its prompt tokens
    / PROMPT_TOKENS_PER_STEP."""
    return (charge.tokens - charge.prompt_tokens) + charge.prompt_tokens / PROMPT_TOKENS_PER_STEP


@dataclass(slots=True, eq=False)
class Dispatch:
    """The handle the server keeps for one request; `complete()` takes it back."""

    charges: list[Charge] = field(default_factory=list)


class InflightTracker:
    """The one ledger of in-flight requests and tokens per endpoint (see module docstring)."""

    def __init__(self, datastore: Datastore | None = None, config: InflightConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config if config is not None else InflightConfig()
        self.config.validate()
        self.clock = clock
        # Open charges per endpoint, oldest first (dicts keep insertion order, O(1) removal).
        self._open: dict[Endpoint, dict[Charge, None]] = {}
        # Every charge in dispatch order, for expiry (released ones are skipped lazily).
        self._by_age: deque[Charge] = deque()
        # updated_at of the scrape each endpoint was last reconciled with.
        self._reconciled_at: dict[Endpoint, float] = {}
        # Prompt tokens dispatched recently, decayed exponentially: endpoint -> (value, at).
        self._recent: dict[Endpoint, tuple[float, float]] = {}
        self._decay_rate = 1.0 / self.config.prefill_window_s
        # Seconds per unit of work, averaged over completions:
        # endpoint -> [average, samples, clock() of the last sample].
        self._speed: dict[Endpoint, list[float]] = {}
        # Endpoints judged slow -> factor (> 1; see _verdict); usually empty on a homogeneous pool.
        self._slowness: dict[Endpoint, float] = {}
        # Engine step time (see the docstring): endpoint -> [decayed ITL seconds, decayed
        # tokens, clock() of the last update, last scraped itl_sum, last scraped itl_count].
        self._steps: dict[Endpoint, list[float]] = {}
        # Set by a speed-aware prefill-load-scorer from its engineLatency (false by default:
        # completions only); only that scorer reads the slowness this feeds.
        self.learn_from_engine_latency = True
        self._datastore = datastore
        # A slow pod also works through its prompts more slowly: with this set (by a
        # speed-aware prefill-load-scorer) its prompts fade over window x slowness.
        self.speed_aware_decay = False
        self.expired = 0  # charges released by the timeout
        self.reconciled = 0  # charges released because the pod no longer held them
        self._task: asyncio.Task[None] | None = None
        if datastore is not None:
            datastore.add_listener(self._on_endpoint_event)

    # --- estimates ----------------------------------------------------------------------
    def estimate_tokens(self, prompt_chars: int, max_tokens: int | None) -> int:
        """Prompt tokens (characters / 4) plus expected decode tokens (max_tokens, or the
        configured default when the client set none)."""
        output = max_tokens if max_tokens is not None and max_tokens >= 0 else self.config.default_output_tokens
        return prompt_chars // CHARACTERS_PER_TOKEN + output

    # --- the ledger ---------------------------------------------------------------------
    def dispatch(self, endpoints: Sequence[Endpoint], tokens: int, prompt_tokens: int = 0,
                 cached: Mapping[str, int] | None = None) -> Dispatch:
        """Charge each endpoint one request and `tokens` tokens, now; `prompt_tokens` also
        feed the endpoint's recent-prompt-tokens estimate (see `recent_prompt_tokens`).

        `cached` (Endpoint.key -> prompt tokens that endpoint holds in its prefix cache, from
        this decision's prefix scorer) takes those tokens off the endpoint's prompt charge:
        vLLM prefills only the tokens it does not hold, so a cache hit adds little prefill
        backlog, and counting its whole prompt would make the pods that serve hits look busy."""
        now = self.clock()
        handle = Dispatch()
        for ep in endpoints:
            prompt = prompt_tokens
            if cached and prompt > 0:
                hit = cached.get(ep.key, 0)
                prompt = prompt - hit if hit < prompt else 0
            if prompt > 0:
                self._recent[ep] = (self._decayed(ep, now) + prompt, now)
            charge = Charge(ep, tokens, now, False, prompt)
            ep.inflight += 1
            ep.inflight_tokens += tokens
            bucket = self._open.get(ep)
            if bucket is None:
                bucket = self._open[ep] = {}
            bucket[charge] = None
            self._by_age.append(charge)
            handle.charges.append(charge)
        return handle

    def complete(self, handle: Dispatch) -> None:
        """Release every charge of the request that is still open (idempotent); its time in
        flight feeds the endpoint's speed average."""
        now = -1.0
        for charge in handle.charges:
            if self._release(charge):
                if now < 0.0:
                    now = self.clock()
                self._learn_speed(charge, now - charge.at)

    def _learn_speed(self, charge: Charge, seconds: float) -> None:
        work = _work(charge)
        if work <= 0.0 or seconds <= 0.0:
            return
        per_work = seconds / work
        entry = self._speed.get(charge.endpoint)
        if entry is None:
            self._speed[charge.endpoint] = [per_work, 1.0, charge.at + seconds]
        else:
            entry[0] += SPEED_SAMPLE_WEIGHT * (per_work - entry[0])
            entry[1] += 1.0
            entry[2] = charge.at + seconds

    def slowness(self, endpoint: Endpoint) -> float:
        """How many times slower than the pool's faster endpoints this one serves (1.0 = full speed
        or not known yet); refreshed by `sweep()`."""
        return self._slowness.get(endpoint, 1.0)

    def slowness_of(self, endpoints: Sequence[Endpoint]) -> list[float] | None:
        """`slowness(ep)` for every endpoint, or None when none is slow (the common case: the
        caller then skips the weighting)."""
        slow = self._slowness
        if not slow:
            return None
        get = slow.get
        return [get(ep, 1.0) for ep in endpoints]

    def _learn_step_times(self, now: float) -> None:
        """Fold each endpoint's inter-token latency growth since the last sweep into its
        decayed step-time sums (endpoints that do not export the histogram are skipped)."""
        endpoints = self._datastore.endpoints() if self._datastore is not None else tuple(self._recent)
        steps = self._steps
        for ep in endpoints:
            m = ep.metrics
            total, count = m.itl_sum, m.itl_count
            if count < 0.0:
                continue
            entry = steps.get(ep)
            if entry is None:
                steps[ep] = [0.0, 0.0, now, total, count]  # the baseline: history before us
                continue
            d_sum, d_count = total - entry[3], count - entry[4]
            entry[3], entry[4] = total, count
            if d_count < 0.0 or d_sum < 0.0:
                continue  # the pod restarted: its counters began again (new baseline set)
            decay = math.exp(-(now - entry[2]) / ITL_WINDOW_S)
            entry[0] = entry[0] * decay + d_sum
            entry[1] = entry[1] * decay + d_count
            entry[2] = now

    def _step_slowness(self) -> dict[Endpoint, float]:
        """Each endpoint's mean step time over the lower quartile of the pool's (empty when
        fewer than two endpoints have one)."""
        means = {ep: e[0] / e[1] for ep, e in self._steps.items() if e[1] >= ITL_MIN_TOKENS and e[0] > 0.0}
        if len(means) < 2:
            return {}
        values = sorted(means.values())
        reference = values[len(values) // 4]
        return {ep: mean / reference for ep, mean in means.items()}

    def _update_slowness(self, now: float) -> None:
        by_steps: dict[Endpoint, float] = {}
        if self.learn_from_engine_latency:
            self._learn_step_times(now)
            by_steps = self._step_slowness()
        known = {ep: entry for ep, entry in self._speed.items() if entry[1] >= SPEED_MIN_SAMPLES}
        if len(known) < 2:
            self._slowness = self._verdict(by_steps)
            return
        # The reference is the lower quartile, not the minimum: from 4 endpoints on, one that
        # answers everything at once (failing fast) must not make every other one look slow.
        values = sorted(entry[0] for entry in known.values())
        reference = values[len(values) // 4]
        measured: dict[Endpoint, float] = {}
        for ep, entry in known.items():
            idle = now - entry[2]
            if idle > 0.0 and entry[0] > reference:
                # No sample since: relax towards the reference, so that a pod shunned for
                # being slow is tried (and measured) again.
                entry[0] = reference + (entry[0] - reference) * math.exp(-idle / SPEED_MEMORY_S)
                entry[2] = now
            measured[ep] = entry[0]
        # A pod that is far behind finishes late, so its completions alone would tell too
        # late: its oldest open request is a lower bound of its time per work already.
        for ep, bucket in self._open.items():
            for oldest in bucket:
                work = _work(oldest)
                if work > 0.0:
                    bound = (now - oldest.at) / work
                    if ep in known:
                        bound /= OPEN_AGE_MARGIN
                    if bound > measured.get(ep, 0.0):
                        measured[ep] = bound
                break
        for ep, per_work in measured.items():
            ratio = per_work / reference
            if ratio > by_steps.get(ep, 0.0):
                by_steps[ep] = ratio
        self._slowness = self._verdict(by_steps)

    def _verdict(self, ratios: dict[Endpoint, float]) -> dict[Endpoint, float]:
        """Ratios through the dead zone and the cap. Below the dead zone an endpoint counts as
        full speed (left out), unless it was slow at the last verdict and is still slower than
        the reference (SLOWNESS_RELEASE): in a burst the fast pods queue too, their time per work
        rises and a 2x slower pod's ratio dips to ~1.2-1.4; snapping it to 1.0 then handed the
        slow pod full-speed shares exactly when its queue was longest (docs/scheduling.md,
        "Heterogeneous pools")."""
        before = self._slowness
        return {ep: min(r, SLOWNESS_CAP) for ep, r in ratios.items()
                if r >= SLOWNESS_DEAD_ZONE or (r >= SLOWNESS_RELEASE and ep in before)}

    def _release(self, charge: Charge) -> bool:
        if charge.released:
            return False
        charge.released = True
        ep = charge.endpoint
        ep.inflight = max(0, ep.inflight - 1)
        ep.inflight_tokens = max(0, ep.inflight_tokens - charge.tokens)
        bucket = self._open.get(ep)
        if bucket is not None:
            bucket.pop(charge, None)
        return True

    def recent_prompt_tokens(self, endpoint: Endpoint, now: float | None = None) -> float:
        """Prompt tokens sent to the endpoint lately, each decaying as exp(-age / window).

        Time to first token is set by the prefills running on a pod, not by how many requests
        decode there: a pod that took a long prompt 50 ms ago is still busy prefilling it, a
        pod holding five decoding requests may be free to prefill at once. The EPP does not see
        a request's first token (responses bypass it), so it estimates the prefill backlog by
        letting each prompt's weight fade with a time constant of `prefill_window_s`. On equal
        prompts this favours the pod that was sent one least recently, like round robin; on
        mixed prompts it weighs them by size."""
        return self._decayed(endpoint, self.clock() if now is None else now)

    def recent_prompt_tokens_of(self, endpoints: Sequence[Endpoint], now: float) -> list[float]:
        """`recent_prompt_tokens(ep, now) + ep.peer_recent_prompt_tokens` for every endpoint, in
        one loop with no call per endpoint (the prefill-load scorer reads it per decision)."""
        rate = self._decay_rate
        exp = math.exp
        get = self._recent.get
        slow = self._slowness if self.speed_aware_decay else None
        out = []
        for ep in endpoints:
            entry = get(ep)
            peer = ep.peer_recent_prompt_tokens
            if entry is None:
                out.append(0.0 + peer)
                continue
            value, at = entry
            age = now - at
            if age <= 0.0:
                out.append(value + peer)
            elif slow:
                out.append(value * exp(-age * rate / slow.get(ep, 1.0)) + peer)
            else:
                out.append(value * exp(-age * rate) + peer)
        return out

    def _decayed(self, endpoint: Endpoint, now: float) -> float:
        entry = self._recent.get(endpoint)
        if entry is None:
            return 0.0
        value, at = entry
        age = now - at
        if age <= 0.0:
            return value
        rate = self._decay_rate
        if self.speed_aware_decay:
            rate /= self._slowness.get(endpoint, 1.0)
        return value * math.exp(-age * rate)

    def open_charges(self, endpoint: Endpoint) -> int:
        bucket = self._open.get(endpoint)
        return len(bucket) if bucket is not None else 0

    # --- expiry and reconciliation ----------------------------------------------------------
    def sweep(self, now: float | None = None) -> int:
        """Expire old charges and reconcile with fresh scrapes; returns how many it released."""
        now = self.clock() if now is None else now
        released = 0
        cutoff = now - self.config.request_timeout_s
        by_age = self._by_age
        while by_age and (by_age[0].released or by_age[0].at <= cutoff):
            charge = by_age.popleft()
            if self._release(charge):
                released += 1
                self.expired += 1
        for ep, bucket in self._open.items():
            if bucket:
                released += self._reconcile(ep, bucket)
        self._update_slowness(now)
        # Completed charges leave the age queue only when they reach its head; behind one
        # long-running request they pile up, so compact when they dominate.
        open_count = sum(len(b) for b in self._open.values())
        if len(by_age) > 4 * open_count + 1024:
            self._by_age = deque(c for c in by_age if not c.released)
        return released

    def _reconcile(self, ep: Endpoint, bucket: dict[Charge, None]) -> int:
        scraped_at = ep.metrics.updated_at
        if scraped_at <= 0.0 or self._reconciled_at.get(ep) == scraped_at:
            return 0  # never scraped, or this scrape was already used
        self._reconciled_at[ep] = scraped_at
        held = ep.metrics.running_requests + ep.metrics.waiting_queue_size
        before = scraped_at - self.config.reconcile_grace_s
        old: list[Charge] = []
        for charge in bucket:  # oldest first
            if charge.at > before:
                break
            old.append(charge)
        surplus = len(old) - held
        if surplus <= 0:
            return 0
        for charge in old[:surplus]:
            self._release(charge)
        self.reconciled += surplus
        return surplus

    def _on_endpoint_event(self, event: str, endpoint: Endpoint) -> None:
        if event == "removed":
            for charge in list(self._open.pop(endpoint, {})):
                charge.released = True
            self._reconciled_at.pop(endpoint, None)
            self._recent.pop(endpoint, None)
            self._speed.pop(endpoint, None)
            self._steps.pop(endpoint, None)
            self._slowness.pop(endpoint, None)

    # --- background sweeping ------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="inflight-sweep")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                self.sweep()
            except Exception:  # a bookkeeping bug must not stop the sweeping for good
                log.exception("in-flight sweep failed")
