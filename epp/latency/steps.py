"""A pod's engine step time, learnt from the first bytes that mark its step ends.

vLLM runs engine steps back to back while it has work. A step prefills the waiting prompts
(up to max_num_batched_tokens) beside the running decodes, and every request whose prefill
ends in that step gets its first token when the step ends. A step costs about
`base + per_ktoken x prefill k tokens`: the shape of epp/sim/config.py LatencyModel, and
of vLLM's own step time at a steady decode batch.

**Samples.** A streamed response's headers come with its first token, so its first byte
marks a step end. Two consecutive step ends on a pod, `start` and `end`, bound one step
when every request whose first byte came at `end` was sent before `start`: such a request
was waiting when the step after `start` was scheduled, so that step took it in.
`StepProbe` finds these pairs; the sample is `(k tokens of those requests, end - start)`.

**Fit.** `fit_step_time` fits `base + per_ktoken x k` by least squares with weights 1/y^2,
the same relative-error fit as the latency predictor's.

**Where it is used.** The virtual prefill queue of LatencyRuntime. A request sent to a pod
that is still working through its queue is charged `base + per_ktoken x k` when it starts
a step of its own, and `per_ktoken x k` when it joins the step queued last. Its TTFT is
then the wait for the steps ahead plus that charge.

In the benchmark's runs, the slow pod's back-to-back steps took 1.03x this shape's time
(median; p90 1.11x) with the true prompt tokens (docs/latency-routing.md, "Engine steps
from first bytes"). The pod's linear TTFT model has nine coefficients over collinear load
features. Its per-token coefficient came out 0.61 s per k tokens where the steps take
0.44-0.52 s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_STEP_SAMPLES = 16  # back-to-back steps of a pod before its step time is used
STEP_WINDOW = 128  # the most recent step samples kept per pod
# First bytes this close together came from the same engine step (the EPP sees them through
# Envoy, a few milliseconds apart at most).
SAME_STEP_S = 0.02
# A step is used as a sample only if it prefilled at most this many k tokens (vLLM's default
# max_num_batched_tokens, 8192). A bigger one spans several steps (chunked prefill).
MAX_STEP_KTOKENS = 8.192
# A step time serves prompts up to this multiple of the largest step in its window.
STEP_COVER = 1.25


@dataclass(frozen=True, slots=True)
class StepTime:
    """One pod's engine step: `base` + `per_ktoken` x prefill k tokens, in seconds.
    `cover` is STEP_COVER x the largest step of its window, in k tokens."""

    base: float
    per_ktoken: float
    cover: float
    samples: int

    def as_json(self) -> list[float]:
        return [self.base, self.per_ktoken, self.cover, self.samples]

    @classmethod
    def from_json(cls, value: object) -> StepTime | None:
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != 4:
            raise ValueError("a step time must be a list [base, perKtoken, cover, samples]")
        base, per_ktoken, cover, samples = (float(v) for v in value)
        return cls(base, per_ktoken, cover, int(samples))


def fit_step_time(samples: Sequence[tuple[float, float]]) -> StepTime | None:
    """`base + per_ktoken x k` fitted to (k tokens, seconds) samples, minimising the relative
    error. None when there are fewer than MIN_STEP_SAMPLES, when the k tokens do not vary,
    or when the fit is not a step (base < 0 or per_ktoken <= 0)."""
    if len(samples) < MIN_STEP_SAMPLES:
        return None
    sw = sx = sy = sxx = sxy = 0.0
    for k, y in samples:
        if not y > 0.0:
            continue
        w = 1.0 / (y * y)
        sw += w
        sx += w * k
        sy += w * y
        sxx += w * k * k
        sxy += w * k * y
    det = sw * sxx - sx * sx
    if not det > 1e-12 * sw * sxx:
        return None
    base = (sy * sxx - sx * sxy) / det
    per_ktoken = (sw * sxy - sx * sy) / det
    if not (base >= 0.0 and per_ktoken > 0.0 and math.isfinite(base) and math.isfinite(per_ktoken)):
        return None
    largest = max(k for k, _ in samples)
    return StepTime(base, per_ktoken, STEP_COVER * largest, len(samples))


@dataclass(slots=True)
class StepProbe:
    """The last step end seen on one pod, and whether it closes a back-to-back step.

    `end` is the time of the last first byte, and `start` the step end before it (0: none
    seen). `ktokens` counts the new prompt tokens of the requests whose first byte came at
    `end`. `whole` says whether they were all sent before `start`."""

    start: float = 0.0
    end: float = 0.0
    ktokens: float = 0.0
    whole: bool = False

    def first_byte(self, at: float, dispatched: float, ktokens: float) -> tuple[float, float] | None:
        """Record a first byte at `at` of a request sent at `dispatched` with `ktokens` new
        prompt tokens. Returns the step sample (k tokens, seconds) that this first byte
        closes, or None. A first byte older than the last step end (another worker's, heard
        late: epp/latency/sharing.py) cannot be placed between the step ends and is left out."""
        if at < self.end - SAME_STEP_S:
            return None
        if self.end and at - self.end <= SAME_STEP_S:
            self.ktokens += ktokens
            self.whole = self.whole and dispatched < self.start - SAME_STEP_S
            return None
        closed = (self.ktokens, self.end - self.start) \
            if self.whole and self.start and self.ktokens <= MAX_STEP_KTOKENS else None
        self.start, self.end, self.ktokens = self.end, at, ktokens
        self.whole = bool(self.start) and dispatched < self.start - SAME_STEP_S
        return closed
