"""The latency model of one pool: predicts TTFT and TPOT of a request on each candidate pod.

Features (one vector per request x pod, built by LatencyRuntime.features):

    bias, new_prompt_ktokens      prompt tokens the pod's prefix cache does not hold (k tokens)
    pending_prefill_ktokens       prompt tokens this EPP sent the pod that have not produced a
                                  first byte yet: the prefill queue in front of the request
    queue_clear_s                 seconds until the pod's prefill queue of this EPP's requests
                                  clears: a virtual FCFS queue per pod (LatencyRuntime), charged
                                  at dispatch with each request's predicted service time on an
                                  idle pod (only its tokens' share of a step when it joins the
                                  last step queued there) and corrected by every observed first
                                  byte
    waiting, running              the pod's scraped vllm:num_requests_waiting / _running
    inflight                      requests in flight to the pod (the EPP's ledger, all workers)
    inflight_decode_ktokens       decode tokens still expected from the pod's in-flight requests
    kv_cache_usage                the pod's scraped KV-cache usage (0..1)

TTFT = queue_clear_s + a linear model of the rest (floored at 0; the sum at the pod's 5th
percentile of observed TTFT of short prompts, one engine step, which the fit can extrapolate
below for a short chat on an idle pod): the wait for the queue
ahead enters with a fixed coefficient of 1 (an offset; the fit learns the residual, with no
coefficient on the two queue features, which it would otherwise use to cancel the offset).
Learnt freely, the queue's coefficient came out near 0 (the warm-up at 70% load rarely
queues, and the 1/y^2 weights favour short requests), so a pod with 10 s of long prefills
queued looked as fast as an idle one at 90% load.

The model is linear in these, which is the shape of a vLLM engine step (step time = base +
per-sequence decode cost + per-token prefill cost, see epp/sim/config.py LatencyModel): TTFT
is the prefill work queued ahead plus the request's own prefill, TPOT grows with the batch
(floored at the pod's 5th percentile of observed TPOT, its decode step, which the linear fit
can extrapolate below).
Pods differ (GPU type, clocks, neighbours), so every pod gets its own coefficients once it
has `min_pod_samples` observations; until then a pooled model over all pods stands in.

Training: weighted ridge least squares (numpy) over a sliding window of the most recent
samples per pod (preallocated numpy rings), with weights 1/y^2 so the fit minimises relative error (the accuracy target
is a median absolute percentage error). Samples are appended from the event loop under a
lock (O(1)); a daemon thread refits every `retrain_interval_s` when new samples arrived and
publishes the coefficients by swapping one dict, so the hot path never waits and never sees a
half-written model. A prediction is pure Python (no numpy call on the hot path: numpy's
per-call overhead is larger than the arithmetic at this size): each pod's published model is
unpacked once per publication (PodModel), and the dot products over a pod's state are kept
while that state is unchanged (PodModel.state_terms, LatencyRuntime.cycle), so a candidate
costs two multiply-adds per target on the request's new tokens and queue wait.

Warm start: `save()` writes the recent samples and the coefficients as JSON (atomically);
`load()` publishes the saved coefficients at once, so a restarted EPP predicts from its
first request.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from operator import mul
from pathlib import Path
from typing import Any

import numpy as np

from epp.latency.steps import STEP_WINDOW, StepTime, fit_step_time

log = logging.getLogger(__name__)

FEATURES = (
    "bias", "new_prompt_ktokens", "pending_prefill_ktokens", "queue_clear_s", "waiting", "running",
    "inflight", "inflight_decode_ktokens", "kv_cache_usage",
)
N_FEATURES = len(FEATURES)
POOLED = ""  # model key of the pooled model
# Feature indexes: the cover (NEW_TOKENS, QUEUE_CLEAR), the TTFT offset (QUEUE_CLEAR), the
# state at a request's decode start (decode_tpot).
NEW_TOKENS, PENDING, QUEUE_CLEAR, WAITING, RUNNING = 1, 2, 3, 4, 5
MIN_SPEED_SAMPLES = 8  # observations of a pod before its speed factor is estimated
MIN_CLEAN_SPEED_SAMPLES = 4  # TTFT observations with nothing pending ahead that _speed prefers
TPOT_FLOOR_PERCENTILE = 5.0  # Coefficients.tpot_floor
TTFT_FLOOR_PERCENTILE = 5.0  # Coefficients.ttft_floor
# New prompt tokens (k) of the TTFT observations the floor is taken over: a prompt that fits
# one short engine step, so the floor is one step whatever share of long prompts a pod serves.
TTFT_FLOOR_MAX_KTOKENS = 1.0
STATE_VERSION = 2  # 2: TTFT has the queue-clear offset (version-1 coefficients do not)
_MIN_Y = 0.002  # seconds: floor of the relative-error weights (a 0 ms TTFT would dominate)
# (features, observations) of a pod -> the least latency predict() serves there.
FloorRule = Callable[[np.ndarray[Any, Any], np.ndarray[Any, Any]], float]


@dataclass(slots=True)
class PredictorConfig:
    window: int = 512  # most recent samples per pod kept for fitting
    min_samples: int = 24  # pooled samples before the model is used at all
    min_pod_samples: int = 48  # samples of one pod before it gets its own coefficients
    ridge: float = 1e-3  # L2 penalty on standardised features (not on the bias)
    retrain_interval_s: float = 0.5
    save_interval_s: float = 30.0
    errors_kept: int = 2000  # (predicted, actual) pairs kept per pod for accuracy reports

    def validate(self) -> None:
        if self.window < 16:
            raise ValueError(f"window must be >= 16 samples, got {self.window}")
        if self.min_samples < N_FEATURES:
            raise ValueError(f"minSamples must be >= {N_FEATURES} (one per feature), got {self.min_samples}")
        if self.min_pod_samples < self.min_samples:
            raise ValueError("minPodSamples must be >= minSamples")
        if self.ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge}")
        if self.retrain_interval_s <= 0 or self.save_interval_s <= 0:
            raise ValueError("retrainIntervalS and saveIntervalS must be > 0")


class _Ring:
    """The most recent observations of one pod as preallocated numpy arrays: an append is one
    row assignment, and the trainer copies whole arrays (no per-sample Python objects to
    convert while holding the GIL)."""

    __slots__ = ("n", "pos", "x", "y")

    def __init__(self, size: int) -> None:
        self.x = np.zeros((size, N_FEATURES), dtype=np.float64)
        self.y = np.zeros(size, dtype=np.float64)
        self.n = 0
        self.pos = 0

    def __len__(self) -> int:
        return self.n

    def append(self, x: Sequence[float], y: float) -> None:
        self.x[self.pos] = x
        self.y[self.pos] = y
        self.pos = (self.pos + 1) % len(self.y)
        if self.n < len(self.y):
            self.n += 1

    def arrays(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Copies of the filled rows, oldest first."""
        size = len(self.y)
        order = (np.arange(self.n) + (self.pos - self.n)) % size
        return self.x[order], self.y[order]


@dataclass(frozen=True, slots=True)
class Coefficients:
    """One pod's model (or the pooled one, key POOLED, in speed-1 units).

    `ttft` / `tpot`: the pod's own coefficients (None until `min_pod_samples`); `*_speed`:
    how much slower than the pooled model the pod is (median of observed / pooled predicted);
    `cover`: the largest new-prompt and queue-clear features in the pod's window. A query
    beyond 1.25x its cover is predicted with pooled x speed instead of the pod's own fit: a pod
    that only served short prompts lately has no data to extrapolate a 20k-token prefill from,
    while the pooled shape has (other pods served them) and the speed carries its identity.
    """

    ttft: tuple[float, ...] | None
    tpot: tuple[float, ...] | None
    ttft_samples: int = 0
    tpot_samples: int = 0
    ttft_speed: float = 1.0
    tpot_speed: float = 1.0
    cover: tuple[float, float] = (math.inf, math.inf)
    # The pod's 5th percentile of observed TPOT: no TPOT prediction goes below it. A linear fit
    # over a pod's load features extrapolates below its decode step (to 0 for a third of the
    # benchmark's slow pod's chats, which took 0.07-0.3 s), and a TPOT target then looks met
    # with room to spare there.
    tpot_floor: float = 0.0
    # The pod's 5th percentile of observed TTFT of short prompts (ttft_floor()): no TTFT
    # prediction goes below it (a first byte takes at least one engine step). The linear
    # shape can reach 0 for a short chat on an idle pod: the benchmark's pooled TTFT fit had a
    # bias of -0.22 s, and 5 of the slow pod's 23 predictions in one run were 0-0.002 s for
    # chats that took 0.11-0.16 s. Both floors, for a pod with fewer than MIN_SPEED_SAMPLES
    # observations and for the pooled model (which serves pods not seen yet): the lowest of
    # the pool's pods' (LatencyPredictor.refit).
    ttft_floor: float = 0.0
    # The pod's engine step time, fitted from its back-to-back steps (epp/latency/steps.py):
    # what a request costs the pod's virtual prefill queue. None with too few steps seen.
    step: StepTime | None = None


def dot(coef: tuple[float, ...] | None, x: Sequence[float]) -> float:
    """coef . x; NaN without coefficients (that target has no model yet)."""
    if coef is None:
        return math.nan
    total: float = sum(map(mul, coef, x))  # C-level loop: ~3x faster than a Python for at 9 floats
    return total


@dataclass(frozen=True, slots=True)
class PodModel:
    """One pod's published model, unpacked once per publication for the hot path
    (LatencyPredictor.pod_model): which coefficients and speed factor serve a query inside the
    pod's cover (`*_in`) and beyond it (`*_out`), the cover's bounds and the floors. A
    candidate's prediction is then two dot products and a few comparisons, with no lookups of
    the pod's and the pooled model per decision (they were half of its cost at 64 pods)."""

    ttft_in: tuple[float, ...] | None = None
    ttft_in_speed: float = 1.0
    ttft_out: tuple[float, ...] | None = None
    ttft_out_speed: float = 1.0
    tpot_in: tuple[float, ...] | None = None
    tpot_in_speed: float = 1.0
    tpot_out: tuple[float, ...] | None = None
    tpot_out_speed: float = 1.0
    new_cover: float = math.inf  # largest new_prompt_ktokens inside the cover
    queue_cover: float = math.inf  # largest queue_clear_s inside the cover
    ttft_floor: float = 0.0
    tpot_floor: float = 0.0
    # The pod's engine step time (Coefficients.step), up to `step_cover` new k tokens (-inf: none).
    step_base: float = 0.0
    step_per_ktoken: float = 0.0
    step_cover: float = -math.inf
    # What predict_split reads for a query inside the cover when both targets have
    # coefficients there, in one tuple: (TTFT new-token and queue coefficients, speed, floor,
    # then the same for TPOT). LatencyRuntime.cycle computes that case inline from it.
    in_linear: tuple[float, float, float, float, float, float, float, float] | None = field(init=False)
    # What service_time reads inside the cover, in one tuple: the TTFT intercept and new-token
    # coefficient, speed and floor. LatencyRuntime.service_times computes it inline from it.
    idle_in: tuple[float, float, float, float] | None = field(init=False)

    def __post_init__(self) -> None:
        ttft, tpot = self.ttft_in, self.tpot_in
        object.__setattr__(self, "in_linear", None if ttft is None or tpot is None else (
            ttft[NEW_TOKENS], ttft[QUEUE_CLEAR], self.ttft_in_speed, self.ttft_floor,
            tpot[NEW_TOKENS], tpot[QUEUE_CLEAR], self.tpot_in_speed, self.tpot_floor))
        object.__setattr__(self, "idle_in", None if ttft is None else (
            ttft[0], ttft[NEW_TOKENS], self.ttft_in_speed, self.ttft_floor))

    @classmethod
    def of(cls, own: Coefficients | None, pooled: Coefficients | None) -> PodModel:
        """The model `predict` serves on a pod with model `own` (None: none yet, the pooled
        model at speed 1 with the pool's floors) beside the pooled one (None: not fitted yet)."""
        pooled_ttft = pooled.ttft if pooled is not None else None
        pooled_tpot = pooled.tpot if pooled is not None else None
        if own is None:  # a pod not seen yet: the pooled model and the pool's floors
            return cls(pooled_ttft, 1.0, pooled_ttft, 1.0, pooled_tpot, 1.0, pooled_tpot, 1.0,
                       ttft_floor=pooled.ttft_floor if pooled is not None else 0.0,
                       tpot_floor=pooled.tpot_floor if pooled is not None else 0.0)
        # Beyond the cover (or without own coefficients): the pooled shape x the pod's speed.
        ttft_out, tpot_out = (pooled_ttft, own.ttft_speed), (pooled_tpot, own.tpot_speed)
        ttft_in = (own.ttft, 1.0) if own.ttft is not None else ttft_out
        tpot_in = (own.tpot, 1.0) if own.tpot is not None else tpot_out
        step = own.step
        return cls(ttft_in[0], ttft_in[1], ttft_out[0], ttft_out[1], tpot_in[0], tpot_in[1],
                   tpot_out[0], tpot_out[1], 1.25 * own.cover[0] + 0.5, 1.25 * own.cover[1] + 0.5,
                   own.ttft_floor, own.tpot_floor,
                   *((step.base, step.per_ktoken, step.cover) if step is not None else ()))

    def predict(self, x: Sequence[float]) -> tuple[float, float]:
        """(TTFT s, TPOT s) for features `x` (LatencyPredictor.predict): predict_split of the
        state part of `x`, with only the two dot products it serves computed."""
        new, queue = x[NEW_TOKENS], x[QUEUE_CLEAR]
        state = list(x)
        state[NEW_TOKENS] = state[QUEUE_CLEAR] = 0.0
        nan = math.nan
        if new <= self.new_cover and queue <= self.queue_cover:
            terms = (dot(self.ttft_in, state), nan, dot(self.tpot_in, state), nan)
        else:
            terms = (nan, dot(self.ttft_out, state), nan, dot(self.tpot_out, state))
        return self.predict_split(terms, new, queue)

    def state_terms(self, x: Sequence[float]) -> tuple[float, float, float, float]:
        """The dot products of this model's TTFT and TPOT coefficients, inside and beyond the
        cover, with features `x` whose new tokens and queue wait are 0: the part of a
        prediction that only the pod's state sets, kept while that state is unchanged
        (predict_split)."""
        return dot(self.ttft_in, x), dot(self.ttft_out, x), dot(self.tpot_in, x), dot(self.tpot_out, x)

    def predict_split(self, terms: tuple[float, float, float, float], new_prompt_ktokens: float,
                      queue: float) -> tuple[float, float]:
        """`predict` of the features whose state part gave `terms` (state_terms) with
        `new_prompt_ktokens` and `queue` (the queue wait) set: two multiply-adds per target
        instead of nine. The queue wait is the TTFT's offset (module docstring); the part
        beyond it is >= 0. Both floored at the pod's floors."""
        if new_prompt_ktokens <= self.new_cover and queue <= self.queue_cover:
            ttft_coef, ttft_speed, ttft_rest = self.ttft_in, self.ttft_in_speed, terms[0]
            tpot_coef, tpot_speed, tpot_rest = self.tpot_in, self.tpot_in_speed, terms[2]
        else:
            ttft_coef, ttft_speed, ttft_rest = self.ttft_out, self.ttft_out_speed, terms[1]
            tpot_coef, tpot_speed, tpot_rest = self.tpot_out, self.tpot_out_speed, terms[3]
        if ttft_coef is None:
            ttft = math.nan
        else:
            own_part = ttft_rest + ttft_coef[NEW_TOKENS] * new_prompt_ktokens + ttft_coef[QUEUE_CLEAR] * queue
            ttft = queue + ttft_speed * own_part if own_part > 0.0 else queue
            if ttft < self.ttft_floor:
                ttft = self.ttft_floor
        if tpot_coef is None:
            tpot = math.nan
        else:
            tpot = tpot_speed * (tpot_rest + tpot_coef[NEW_TOKENS] * new_prompt_ktokens
                                 + tpot_coef[QUEUE_CLEAR] * queue)
            if tpot < self.tpot_floor:
                tpot = self.tpot_floor
        return ttft, tpot

    def _idle(self, new_prompt_ktokens: float) -> tuple[tuple[float, ...] | None, float]:
        """TTFT coefficients and speed for a prompt with no queue: only the new tokens can lie
        beyond the cover."""
        if new_prompt_ktokens <= self.new_cover:
            return self.ttft_in, self.ttft_in_speed
        return self.ttft_out, self.ttft_out_speed

    def service_time(self, new_prompt_ktokens: float) -> float:
        """LatencyPredictor.service_time. (_idle and max() unrolled: the scorer asks it of every
        candidate.)"""
        if new_prompt_ktokens <= self.new_cover:
            coef, speed = self.ttft_in, self.ttft_in_speed
        else:
            coef, speed = self.ttft_out, self.ttft_out_speed
        if coef is None:
            return math.nan
        own = coef[0] + coef[NEW_TOKENS] * new_prompt_ktokens
        seconds = speed * own if own > 0.0 else 0.0
        return seconds if seconds > self.ttft_floor else self.ttft_floor

    def step_share(self, new_prompt_ktokens: float) -> float:
        """LatencyPredictor.step_share: from the pod's step time inside its cover."""
        if new_prompt_ktokens <= self.step_cover:
            return self.step_per_ktoken * new_prompt_ktokens
        coef, speed = self._idle(new_prompt_ktokens)
        if coef is None:
            return math.nan
        return speed * max(0.0, coef[NEW_TOKENS] * new_prompt_ktokens)

    def queue_service(self, new_prompt_ktokens: float) -> float:
        """LatencyPredictor.queue_service."""
        if new_prompt_ktokens <= self.step_cover:
            seconds = self.step_base + self.step_per_ktoken * new_prompt_ktokens
            return seconds if seconds > self.ttft_floor else self.ttft_floor
        return self.service_time(new_prompt_ktokens)


@dataclass(slots=True)
class _Series:
    """Samples of one target (TTFT or TPOT): per-pod windows plus what is not fitted yet."""

    per_pod: dict[str, _Ring] = field(default_factory=dict)
    unfitted: int = 0
    oldest_unfitted: float = 0.0  # monotonic arrival of the oldest sample not in a model


def fit_ridge(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], ridge: float,
              offset: np.ndarray[Any, Any] | None = None) -> tuple[float, ...]:
    """Weighted ridge regression minimising sum(((offset + x @ w - y) / y)^2) + ridge *
    |w_scaled|^2; column 0 is the bias (not penalised). Returns w in the original feature
    units."""
    weights = 1.0 / np.maximum(y, _MIN_Y)
    if offset is not None:
        # The queue is in the offset: its features get no coefficient of their own, else the
        # fit would use them to cancel the offset (pending tokens and queue time are collinear).
        x = x.copy()
        x[:, PENDING] = 0.0
        x[:, QUEUE_CLEAR] = 0.0
    xw = x * weights[:, None]
    yw = (y if offset is None else y - offset) * weights
    scale = np.sqrt(np.mean(xw * xw, axis=0))
    scale[scale == 0.0] = 1.0
    xs = xw / scale
    gram = xs.T @ xs
    penalty = np.full(x.shape[1], ridge * len(y))
    penalty[0] = 0.0
    gram[np.diag_indices_from(gram)] += penalty
    try:
        w = np.linalg.solve(gram, xs.T @ yw)
    except np.linalg.LinAlgError:
        w = np.linalg.lstsq(xs, yw, rcond=None)[0]
    coef = w / scale
    return tuple(float(c) for c in coef)


def _speed(coef: tuple[float, ...], x: np.ndarray[Any, Any], y: np.ndarray[Any, Any],
           offset: np.ndarray[Any, Any] | None = None) -> float:
    """How many times slower than the pooled model a pod is: the median of observed over
    predicted (beyond the offset, the queue wait, which is in the pod's own time already),
    clamped to [0.1, 10]; 1 with too few observations."""
    if len(y) < MIN_SPEED_SAMPLES:
        return 1.0
    raw = x @ np.asarray(coef)
    predicted = np.maximum(raw, _MIN_Y)
    own = y if offset is None else np.maximum(y - offset, _MIN_Y)
    # Where the pooled shape predicts no work (its linear fit crosses 0 at high load: negative
    # weights on the waiting count and KV use), the ratio says nothing of the pod: own / _MIN_Y
    # is 1 for a request whose wait took all of its TTFT (a chat whose first byte came in the
    # same engine step as the long prompt ahead of it) and hundreds for one that waited
    # unseen. Left out while enough others are left. In the bench at 70% load, 20 of the slow
    # pod's 44 observations were such and put its speed at 1.13 (1.85 without them, 2 is its
    # prefill speed), so it got long prompts.
    informative = raw > _MIN_Y
    keep = informative if np.count_nonzero(informative) >= MIN_SPEED_SAMPLES else None
    if offset is not None:
        # TTFT beyond the queue wait is the request's own prefill only when the wait is known
        # right, and it is for sure only with nothing of ours pending ahead. Behind a prompt, a
        # chat gets its first byte in the same engine step as that prompt (own part ~0, ratio
        # ~0.03), or after a wait the virtual queue did not see (ratio up to 50). In the bench's
        # warm-up windows such observations put the slow pod at 0.13x to 5x the fast pods'
        # speed (2x is right); at 0.13x it got 14 of 23 long prompts, TTFT p90 68 s. Without
        # them it read 1.8-2.3x in every window of the 33 states saved that day
        # (docs/bench-results/latency-2026-12-03-speed-clean.txt).
        clean = informative & (x[:, PENDING] == 0.0)
        if np.count_nonzero(clean) >= MIN_CLEAN_SPEED_SAMPLES:
            keep = clean
    if keep is not None:
        own, predicted = own[keep], predicted[keep]
    return float(np.clip(np.median(own / predicted), 0.1, 10.0))


def _own_beats_pooled(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], offset: np.ndarray[Any, Any] | None,
                      pooled: tuple[float, ...], ridge: float, floor: FloorRule | None = None) -> bool:
    """Whether a pod's own fit predicts its newest observations at least as well as the pooled
    shape x its speed: both fitted on the older part of its window (the speed too), judged by the
    median relative error on the newest quarter. A pod's own fit has 9 free coefficients on a
    narrow sample (the slow pod of the benchmark serves short chats only): it predicted 0.0-0.1
    s for chats that took 0.13-0.3 s, where the pooled shape's one speed factor, a median
    ratio, is right for the typical request by construction. With a `floor` rule both are
    judged as predict() serves them: at least the floor of the older part's observations
    (Coefficients.ttft_floor / tpot_floor); a fit that dips below the pod's engine step is not
    blamed for errors the floor takes away."""
    n = len(y)
    held = max(MIN_SPEED_SAMPLES, n // 4)
    if n - held < N_FEATURES:
        return True
    train, test = slice(0, n - held), slice(n - held, n)
    off_train = offset[train] if offset is not None else None
    off_test = offset[test] if offset is not None else 0.0
    own = np.asarray(fit_ridge(x[train], y[train], ridge, off_train))
    speed = _speed(pooled, x[train], y[train], off_train)
    x_test = x[test]  # the queue features have no coefficient in either fit (fit_ridge)
    actual = np.maximum(y[test], _MIN_Y)
    least = 0.0 if floor is None else floor(x[train], y[train])
    own_err = np.abs(np.maximum(least, off_test + np.maximum(x_test @ own, 0.0)) - actual) / actual
    pooled_err = np.abs(np.maximum(least, off_test + speed * np.maximum(x_test @ np.asarray(pooled), 0.0))
                        - actual) / actual
    return bool(np.median(own_err) <= np.median(pooled_err))


def tpot_floor(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    """A pod's TPOT floor (Coefficients.tpot_floor): the TPOT_FLOOR_PERCENTILE of its TPOTs."""
    return float(np.percentile(y, TPOT_FLOOR_PERCENTILE))


def _short_prompt_ttfts(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The TTFTs of prompts of at most TTFT_FLOOR_MAX_KTOKENS new tokens."""
    short: np.ndarray[Any, Any] = y[x[:, NEW_TOKENS] <= TTFT_FLOOR_MAX_KTOKENS]
    return short


def ttft_floor(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], pooled_short: np.ndarray[Any, Any]) -> float:
    """A pod's TTFT floor (Coefficients.ttft_floor): the TTFT_FLOOR_PERCENTILE of its short
    prompts' TTFTs. With fewer than MIN_SPEED_SAMPLES of them, the lower of that percentile of
    all its TTFTs and of the pool's short prompts' (0 when the pool has too few as well): a
    floor only ever too low is harmless. Over all its observations alone, a pod that served
    mostly long prompts (a scheduler that keeps them off the others) gets a floor of seconds,
    and every chat is predicted that slow there."""
    short = _short_prompt_ttfts(x, y)
    if len(short) >= MIN_SPEED_SAMPLES:
        return float(np.percentile(short, TTFT_FLOOR_PERCENTILE))
    if len(pooled_short) < MIN_SPEED_SAMPLES:
        return 0.0
    return float(min(np.percentile(y, TTFT_FLOOR_PERCENTILE), np.percentile(pooled_short, TTFT_FLOOR_PERCENTILE)))


def _normalised(y: np.ndarray[Any, Any], offset: np.ndarray[Any, Any] | None, speed: float) -> np.ndarray[Any, Any]:
    """Observations in speed-1 units: the part beyond the offset divided by the pod's speed."""
    out: np.ndarray[Any, Any] = y / speed if offset is None else offset + (y - offset) / speed
    return out


class LatencyPredictor:
    """Online TTFT / TPOT model of one pool (see module docstring)."""

    def __init__(self, config: PredictorConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config if config is not None else PredictorConfig()
        self.config.validate()
        self.clock = clock
        self._lock = threading.Lock()
        self._series = {"ttft": _Series(), "tpot": _Series()}
        # pod -> its most recent back-to-back engine steps (k tokens, seconds): observe_step.
        self._steps: dict[str, deque[tuple[float, float]]] = {}
        self._steps_unfitted = 0
        # Published models: key (pod key, or POOLED) -> Coefficients. Replaced, never mutated
        # (the `models` property), and unpacked per pod on first use (pod_model).
        self._models: dict[str, Coefficients] = {}
        self._pod_models: dict[str, PodModel] = {}
        self.version = 0  # incremented per publication
        self.last_fit_s = 0.0  # duration of the last refit (all pods)
        self.fits = 0
        # pod -> deque of (at, target, predicted, actual): accuracy reports (bench, tests).
        self.errors: dict[str, deque[tuple[float, str, float, float]]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Not `_thread`: compiled by mypyc (epp/latency/native.py), its C name clashes with `__thread`.
        self._trainer_thread: threading.Thread | None = None
        self.state_path: Path | None = None
        self._last_save = 0.0

    # --- hot path ---------------------------------------------------------------------------
    @property
    def models(self) -> dict[str, Coefficients]:
        return self._models

    @models.setter
    def models(self, models: dict[str, Coefficients]) -> None:
        """Publish `models`: one reference swap each, so readers see the old or the new ones.
        The models first: a reader that finds the new (empty) unpacked dict reads them. The
        version last: a reader that sees it new gets the new models (LatencyRuntime.cycle
        keeps per-pod terms of the pod models for one version)."""
        self._models = models
        self._pod_models = {}
        self.version += 1

    @property
    def ready(self) -> bool:
        """True once a pooled TTFT model exists (before that the plugins fall back)."""
        pooled = self.models.get(POOLED)
        return pooled is not None and pooled.ttft is not None

    def pod_model(self, pod: str) -> PodModel:
        """The published model of `pod` unpacked for the hot path (PodModel), built once per
        publication and pod."""
        unpacked = self._pod_models
        model = unpacked.get(pod)
        if model is None:
            # The models are at least as new as `unpacked` (the setter swaps them first); should
            # a publication come between, this goes into the replaced dict and is dropped.
            models = self._models
            model = unpacked[pod] = PodModel.of(models.get(pod), models.get(POOLED))
        return model

    def predict(self, pod: str, x: Sequence[float]) -> tuple[float, float]:
        """(TTFT s, TPOT s) of a request with features `x` on `pod`; NaN where no model exists."""
        return self.pod_model(pod).predict(x)

    def decode_tpot(self, pod: str, x: Sequence[float]) -> float:
        """Predicted TPOT of a request with features `x` on `pod` for the pod's state when its
        decode starts: the prefills queued ahead of it done (nothing pending, no queue to
        clear) and the requests waiting ahead of it running. `predict`'s TPOT is for the
        state now, where queued prefill chunks stall decodes; a long prompt decodes seconds
        later, after them. NaN without a model."""
        start = list(x)
        start[RUNNING] += start[WAITING]
        start[PENDING] = start[QUEUE_CLEAR] = start[WAITING] = 0.0
        return self.predict(pod, start)[1]

    def service_time(self, pod: str, new_prompt_ktokens: float) -> float:
        """Predicted TTFT of a request on `pod` if it found the pod idle (no queue, no load):
        what it adds to the pod's prefill queue. NaN without a model. The same as `predict`'s
        TTFT for the features (1, new_prompt_ktokens, 0, ...), with only the two non-zero
        terms computed: the queue-harm cost asks it once per candidate per decision."""
        return self.pod_model(pod).service_time(new_prompt_ktokens)

    def step_share(self, pod: str, new_prompt_ktokens: float) -> float:
        """Seconds `new_prompt_ktokens` add to an engine step of `pod` that runs anyway: the
        per-token part of the pod's step time (epp/latency/steps.py) inside its cover, else of
        `service_time`, without the fixed part (the step and the request's overhead). What a
        request costs the pod's prefill queue when vLLM prefills it in the same step as
        requests queued ahead of it. NaN without a model."""
        return self.pod_model(pod).step_share(new_prompt_ktokens)

    def queue_service(self, pod: str, new_prompt_ktokens: float) -> float:
        """Seconds a request with `new_prompt_ktokens` holds up `pod`'s prefill queue in a step
        of its own: the pod's step time (epp/latency/steps.py) inside its cover, else
        `service_time`. NaN without either."""
        return self.pod_model(pod).queue_service(new_prompt_ktokens)

    def observe_step(self, pod: str, ktokens: float, seconds: float) -> None:
        """Add one back-to-back engine step of `pod` (epp/latency/steps.py StepProbe); O(1),
        called on the event loop. The trainer fits the pod's step time at its next refit."""
        if not (seconds > 0.0 and math.isfinite(seconds) and ktokens >= 0.0):
            return
        with self._lock:
            window = self._steps.get(pod)
            if window is None:
                window = self._steps[pod] = deque(maxlen=STEP_WINDOW)
            window.append((ktokens, seconds))
            self._steps_unfitted += 1
        if not self._wake.is_set():
            self._wake.set()

    def step_samples(self, pod: str) -> list[tuple[float, float]]:
        with self._lock:
            return list(self._steps.get(pod, ()))

    # --- observations -------------------------------------------------------------------------
    def observe(self, target: str, pod: str, x: Sequence[float], actual_s: float,
                predicted_s: float = math.nan) -> None:
        """Add one observed latency (target "ttft" or "tpot"); O(1), called on the event loop."""
        if not (actual_s >= 0.0 and math.isfinite(actual_s)) or len(x) != N_FEATURES:
            return
        now = self.clock()
        series = self._series[target]
        with self._lock:
            window = series.per_pod.get(pod)
            if window is None:
                window = series.per_pod[pod] = _Ring(self.config.window)
            window.append(x, actual_s)
            if series.unfitted == 0:
                series.oldest_unfitted = now
            series.unfitted += 1
            if predicted_s == predicted_s:  # not NaN: keep the pair for accuracy reports
                errors = self.errors.get(pod)
                if errors is None:
                    errors = self.errors[pod] = deque(maxlen=self.config.errors_kept)
                errors.append((now, target, predicted_s, actual_s))
        if not self._wake.is_set():  # set() takes a lock: skip it when the trainer is already due
            self._wake.set()

    def training_lag(self) -> float:
        """Age in seconds of the oldest observation not yet in a published model (0: none)."""
        now = self.clock()
        lag = 0.0
        for series in self._series.values():
            if series.unfitted:
                lag = max(lag, now - series.oldest_unfitted)
        return lag

    def sample_counts(self) -> dict[str, int]:
        with self._lock:
            return {target: sum(len(w) for w in s.per_pod.values()) for target, s in self._series.items()}

    # --- training (background thread) -------------------------------------------------------
    def refit(self) -> bool:
        """Fit every model from the current windows and publish them; False if nothing new."""
        with self._lock:
            if not any(s.unfitted for s in self._series.values()) and not self._steps_unfitted:
                return False
            snapshot = {target: {pod: w.arrays() for pod, w in s.per_pod.items()}
                        for target, s in self._series.items()}
            step_samples = {pod: list(w) for pod, w in self._steps.items()}
            for s in self._series.values():
                s.unfitted = 0
            self._steps_unfitted = 0
        t0 = time.perf_counter()
        cfg = self.config
        fitted: dict[str, dict[str, tuple[tuple[float, ...] | None, int]]] = {"ttft": {}, "tpot": {}}
        speeds: dict[str, dict[str, float]] = {"ttft": {}, "tpot": {}}
        covers: dict[str, tuple[float, float]] = {}
        floors: dict[str, dict[str, float]] = {"ttft": {}, "tpot": {}}
        for target, per_pod in snapshot.items():
            if not per_pod:
                continue
            xs = np.concatenate([x for x, _ in per_pod.values()])
            ys = np.concatenate([y for _, y in per_pod.values()])
            # TTFT: the queue wait is an offset (module docstring); TPOT has none.
            offsets = {pod: (x[:, QUEUE_CLEAR] if target == "ttft" else None) for pod, (x, _) in per_pod.items()}
            if len(ys) >= cfg.min_samples:
                # Pooled shape in speed-1 units: fit, estimate each pod's speed against it, fit
                # again on the speed-normalised observations, re-estimate the speeds. The
                # offset is in the pod's own time already, so only the rest is normalised.
                off_all = np.concatenate([x[:, QUEUE_CLEAR] for x, _ in per_pod.values()]) \
                    if target == "ttft" else None
                coef = fit_ridge(xs, ys, cfg.ridge, off_all)
                for _ in range(2):
                    speed = {pod: _speed(coef, x, y, offsets[pod]) for pod, (x, y) in per_pod.items()}
                    norm = np.concatenate([_normalised(y, offsets[pod], speed[pod]) for pod, (_, y) in per_pod.items()])
                    coef = fit_ridge(xs, norm, cfg.ridge, off_all)
                speeds[target] = {pod: _speed(coef, x, y, offsets[pod]) for pod, (x, y) in per_pod.items()}
                fitted[target][POOLED] = (coef, len(ys))
            pooled = fitted[target].get(POOLED)
            floor: FloorRule = (partial(ttft_floor, pooled_short=_short_prompt_ttfts(xs, ys)) if target == "ttft"
                                else tpot_floor)
            for pod, (x, y) in per_pod.items():
                covers[pod] = (float(x[:, NEW_TOKENS].max()), float(x[:, QUEUE_CLEAR].max()))
                if len(y) >= MIN_SPEED_SAMPLES:
                    floors[target][pod] = floor(x, y)
                own = None
                if len(y) >= cfg.min_pod_samples and (
                        pooled is None or pooled[0] is None
                        or _own_beats_pooled(x, y, offsets[pod], pooled[0], cfg.ridge, floor)):
                    own = fit_ridge(x, y, cfg.ridge, offsets[pod])
                fitted[target][pod] = (own, len(y))
        # A pod with too few observations for a floor of its own (a new pod, the pooled model
        # that serves pods not seen yet) gets the lowest of the pool's: without any, the pooled
        # shape predicted 0 s for a short prompt there (its bias is negative), its virtual queue
        # grew by nothing per dispatch, and the TTFT bound sent it every request.
        pool_floors = {target: min(per_target.values(), default=0.0) for target, per_target in floors.items()}
        steps = {pod: fit_step_time(samples) for pod, samples in step_samples.items()}
        models: dict[str, Coefficients] = {}
        for key in set(fitted["ttft"]) | set(fitted["tpot"]):
            ttft = fitted["ttft"].get(key)
            tpot = fitted["tpot"].get(key)
            models[key] = Coefficients(ttft[0] if ttft else None, tpot[0] if tpot else None,
                                       ttft[1] if ttft else 0, tpot[1] if tpot else 0,
                                       speeds["ttft"].get(key, 1.0), speeds["tpot"].get(key, 1.0),
                                       covers.get(key, (math.inf, math.inf)),
                                       floors["tpot"].get(key, pool_floors["tpot"]),
                                       floors["ttft"].get(key, pool_floors["ttft"]),
                                       steps.get(key))
        self.models = models  # one reference swap: readers see the old or the new dict
        self.fits += 1
        self.last_fit_s = time.perf_counter() - t0
        return True

    def start(self) -> None:
        """Start the training thread (idempotent)."""
        if self._trainer_thread is not None and self._trainer_thread.is_alive():
            return
        self._stop.clear()
        self._trainer_thread = threading.Thread(target=self._run, name="latency-trainer", daemon=True)
        self._trainer_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        thread, self._trainer_thread = self._trainer_thread, None
        if thread is not None:
            thread.join(timeout)
        if self.state_path is not None:
            self._save_quietly()

    def _run(self) -> None:
        cfg = self.config
        while not self._stop.is_set():
            self._wake.wait(cfg.retrain_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.refit()
            except Exception:  # a numeric failure must not end training for good
                log.exception("latency predictor refit failed")
            if self.state_path is not None and time.monotonic() - self._last_save >= cfg.save_interval_s:
                self._save_quietly()
            # Refit at most once per interval however fast samples arrive.
            self._stop.wait(cfg.retrain_interval_s)

    # --- warm start -----------------------------------------------------------------------------
    def _save_quietly(self) -> None:
        self._last_save = time.monotonic()
        assert self.state_path is not None
        try:
            self.save(self.state_path)
        except OSError as e:
            log.warning("cannot save the latency predictor state to %s: %s", self.state_path, e)

    def state(self) -> dict[str, Any]:
        now = self.clock()
        with self._lock:
            arrays = {target: {pod: w.arrays() for pod, w in s.per_pod.items()}
                      for target, s in self._series.items()}
            errors = {pod: [[round(at - now, 3), target, p, a] for at, target, p, a in e]
                      for pod, e in self.errors.items()}
            steps = {pod: [[k, y] for k, y in w] for pod, w in self._steps.items()}
        samples = {target: {pod: [[row.tolist(), float(v)] for row, v in zip(x, y, strict=True)]
                            for pod, (x, y) in per_pod.items()} for target, per_pod in arrays.items()}
        models = {key: {"ttft": list(m.ttft) if m.ttft else None, "tpot": list(m.tpot) if m.tpot else None,
                        "ttftSamples": m.ttft_samples, "tpotSamples": m.tpot_samples,
                        "ttftSpeed": m.ttft_speed, "tpotSpeed": m.tpot_speed,
                        "cover": [c if math.isfinite(c) else None for c in m.cover],
                        "tpotFloor": m.tpot_floor, "ttftFloor": m.ttft_floor,
                        "step": m.step.as_json() if m.step is not None else None}
                  for key, m in self.models.items()}
        return {"version": STATE_VERSION, "features": list(FEATURES), "models": models,
                "samples": samples, "steps": steps, "errors": errors}

    def save(self, path: Path) -> None:
        """Write the state atomically (temporary file + rename)."""
        data = json.dumps(self.state(), separators=(",", ":"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)

    def load(self, path: Path) -> bool:
        """Warm start from a saved state; False (and a warning) when there is none or it does
        not fit this build (other features): the predictor then starts cold."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as e:
            log.warning("ignoring the latency predictor state %s: %s", path, e)
            return False
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION or raw.get("features") != list(FEATURES):
            log.warning("ignoring the latency predictor state %s: other version or features", path)
            return False
        try:
            models = {
                str(key): Coefficients(_coef(m.get("ttft")), _coef(m.get("tpot")),
                                       int(m.get("ttftSamples", 0)), int(m.get("tpotSamples", 0)),
                                       float(m.get("ttftSpeed", 1.0)), float(m.get("tpotSpeed", 1.0)),
                                       _cover(m.get("cover")), float(m.get("tpotFloor", 0.0)),
                                       float(m.get("ttftFloor", 0.0)), StepTime.from_json(m.get("step")))
                for key, m in raw.get("models", {}).items()
            }
            # A state saved before the step times has none: they are learnt afresh.
            steps = {str(pod): deque(((float(k), float(y)) for k, y in rows), maxlen=STEP_WINDOW)
                     for pod, rows in (raw.get("steps") or {}).items()}
            with self._lock:
                for target, per_pod in raw.get("samples", {}).items():
                    series = self._series.get(target)
                    if series is None:
                        continue
                    for pod, rows in per_pod.items():
                        window = series.per_pod[str(pod)] = _Ring(self.config.window)
                        for xs, y in rows:
                            if len(xs) == N_FEATURES:
                                window.append([float(v) for v in xs], float(y))
                self._steps = steps
        except (TypeError, ValueError, AttributeError) as e:
            log.warning("ignoring the latency predictor state %s: malformed (%s)", path, e)
            return False
        self.models = models
        return True


def _cover(value: Any) -> tuple[float, float]:
    if value is None:
        return (math.inf, math.inf)
    new, queue = value
    return (math.inf if new is None else float(new), math.inf if queue is None else float(queue))


def _coef(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != N_FEATURES:
        raise ValueError(f"coefficients must be a list of {N_FEATURES} numbers")
    return tuple(float(v) for v in value)

