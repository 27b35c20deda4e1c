"""The decision bus: every committed routing decision, for whoever listens.

The ext_proc handler publishes one DecisionEvent per scheduled request (after the PreRequest
plugins ran, i.e. once the EPP committed to the pick). Listeners are the trace recorder
(`epp serve --record-dir`, epp/replay/record.py) and the admin API's live view.

Cost model (the handler is the hot path):
- Nobody subscribed: the handler checks `bus.active` (one attribute read) and builds nothing.
- Subscribed: the event is built once and offered to each subscription; an offer never
  blocks and never waits for the consumer. A subscription is a bounded buffer: when it is
  full the event is dropped and counted (`Subscription.dropped`), so a slow consumer loses
  events instead of slowing routing down.
- The prompt text is copied into the event only when a subscription asked for it
  (`with_prompts`); otherwise the event carries the prompt length and the prefix-block
  hashes the prefix-cache scorer already computed (never re-hashed here).

Everything runs on the event loop thread of one EPP process (one bus per worker), so no
locks are needed; `Subscription.get()` is awaitable for stream consumers and `drain()` serves
batch consumers that wake on a timer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from epp.headers import OBJECTIVE
from epp.scheduling.plugins.precise_prefix_cache_scorer import PreciseCycleState
from epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheCycleState
from epp.scheduling.types import CycleState, LLMRequest, SchedulingResult


@dataclass(slots=True)
class DecisionEvent:
    """One committed decision. Times are wall clock (epoch seconds) so traces from several
    EPP replicas can be merged; `decision_s` is the scheduler's own duration."""

    time: float
    request_id: str
    model: str
    target_model: str
    objective: str | None  # the x-llm-d-inference-objective header (or alias), if any
    priority: int
    path: str
    stream: bool
    max_tokens: int | None
    prompt_chars: int  # characters of the flattened prompt (LLMRequest.prompt_text())
    prompt_tokens: int | None  # when a tokenizing scorer (precise prefix cache) counted them
    # The approximate prefix-cache scorer's chained block hashes and its block size in bytes
    # (empty / 0 when no prefix-cache-scorer ran).
    prefix_hashes: list[int]
    prefix_block_size: int
    primary_profile: str
    picks: dict[str, str]  # profile -> hostport of its first target (incl. the prefill pod)
    fallbacks: list[str]  # further hostports of the primary profile, best first
    scores: dict[str, float]  # primary profile: endpoint key -> weighted score
    decision_s: float
    headers_set: dict[str, str] = field(default_factory=dict)  # e.g. x-prefiller-host-port
    prompt: str | None = None  # only for subscriptions that asked for prompts
    cache_salt: str | None = None
    # The admin API's step-by-step trace when this decision was sampled for explanation
    # (epp/admin/feed.py ExplainedDecision); None otherwise.
    detail: Any = None
    # The containers are shared with the scheduler's result (see build_event): read-only.

    @property
    def target(self) -> str:
        """The hostport the request went to (the primary profile's pick)."""
        return self.picks.get(self.primary_profile, "")

    @property
    def prefill(self) -> str | None:
        """The P/D prefill pod, if another profile than the primary one picked a pod."""
        for profile, hostport in self.picks.items():
            if profile != self.primary_profile:
                return hostport
        return None


def build_event(request: LLMRequest, result: SchedulingResult, state: CycleState, seconds: float,
                with_prompt: bool = False, detail: Any = None) -> DecisionEvent:
    """The event for one decision; only called when somebody listens.

    Lists and dicts are shared, not copied: every decision has its own result and cycle
    state, which nothing changes after the decision, so consumers must only read them."""
    hashes: list[int] = _NO_HASHES
    block_size = 0
    tokens: int | None = None
    for value in state.values():
        kind = type(value)
        if kind is PrefixCacheCycleState:
            if block_size == 0:
                hashes, block_size = value.hashes, value.block_size
        elif kind is PreciseCycleState and tokens is None:
            tokens = value.prompt_tokens
    profile_results = result.profile_results
    primary_profile = result.primary_profile
    primary = profile_results.get(primary_profile)
    if len(profile_results) == 1 and primary is not None and primary.targets:
        targets = primary.targets
        picks = {primary_profile: targets[0].hostport}
    else:
        picks = {p: r.targets[0].hostport for p, r in profile_results.items() if r is not None and r.targets}
        targets = primary.targets if primary is not None else []
    body = request.body
    salt = body.get("cache_salt") if body else None
    prompt = request.prompt_text()
    return DecisionEvent(
        time.time(), request.request_id, request.model, request.target_model,
        request.headers.get(OBJECTIVE), request.priority, request.path, request.stream,
        request.max_tokens, len(prompt), tokens, hashes, block_size, primary_profile, picks,
        [ep.hostport for ep in targets[1:]] if len(targets) > 1 else _NO_FALLBACKS,
        primary.scores if primary is not None else _NO_SCORES, seconds, result.headers,
        prompt if with_prompt else None, salt if isinstance(salt, str) else None, detail,
    )


# Shared empty values (read-only, like every container of an event).
_NO_HASHES: list[int] = []
_NO_FALLBACKS: list[str] = []
_NO_SCORES: dict[str, float] = {}


class Subscription:
    """A bounded buffer of events for one listener. `offer` never blocks: a full buffer
    drops the new event and counts it."""

    __slots__ = (
        "_credit",
        "_items",
        "_waiter",
        "delivered",
        "dropped",
        "maxsize",
        "predicate",
        "sample",
        "with_prompts",
    )

    def __init__(self, maxsize: int = 4096, sample: float = 1.0,
                 predicate: Callable[[DecisionEvent], bool] | None = None,
                 with_prompts: bool = False) -> None:
        if maxsize < 1:
            raise ValueError(f"subscription maxsize must be >= 1, got {maxsize}")
        if not 0.0 < sample <= 1.0:
            raise ValueError(f"subscription sample rate must be in (0, 1], got {sample}")
        self.maxsize = maxsize
        self.sample = sample
        self.predicate = predicate
        self.with_prompts = with_prompts
        self.delivered = 0
        self.dropped = 0
        self._credit = 0.0  # deterministic sampling: keep an event each time credit reaches 1
        self._items: deque[DecisionEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, event: DecisionEvent) -> None:
        if self.predicate is not None and not self.predicate(event):
            return
        if self.sample < 1.0:
            self._credit += self.sample
            if self._credit < 1.0:
                return
            self._credit -= 1.0
        if len(self._items) >= self.maxsize:
            self.dropped += 1
            return
        self._items.append(event)
        self.delivered += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def drain(self, limit: int = 0) -> list[DecisionEvent]:
        """Take the buffered events (at most `limit` when > 0), oldest first."""
        items = self._items
        if limit <= 0 or limit >= len(items):
            out = list(items)
            items.clear()
            return out
        return [items.popleft() for _ in range(limit)]

    async def get(self) -> DecisionEvent:
        """The next event, waiting for one if the buffer is empty."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)


class DecisionBus:
    """Publish/subscribe of DecisionEvents; `active` is False while nobody listens, and the
    publisher checks it before building an event."""

    __slots__ = ("_subs", "active", "published", "want_prompts")

    def __init__(self) -> None:
        self._subs: tuple[Subscription, ...] = ()
        self.active = False
        self.want_prompts = False
        self.published = 0

    def subscribe(self, maxsize: int = 4096, sample: float = 1.0,
                  predicate: Callable[[DecisionEvent], bool] | None = None,
                  with_prompts: bool = False) -> Subscription:
        sub = Subscription(maxsize, sample, predicate, with_prompts)
        self._subs = (*self._subs, sub)
        self._refresh()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs = tuple(s for s in self._subs if s is not sub)
        self._refresh()

    def _refresh(self) -> None:
        self.active = bool(self._subs)
        self.want_prompts = any(s.with_prompts for s in self._subs)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return self._subs

    def publish(self, event: DecisionEvent) -> None:
        self.published += 1
        if self.want_prompts:
            # Only the subscriptions that asked for prompts see the text.
            bare: DecisionEvent | None = None
            for sub in self._subs:
                if sub.with_prompts:
                    sub.offer(event)
                else:
                    if bare is None:
                        bare = _without_prompt(event)
                    sub.offer(bare)
            return
        for sub in self._subs:
            sub.offer(event)

    def publish_decision(self, request: LLMRequest, result: SchedulingResult, state: CycleState,
                         seconds: float, detail: Any = None) -> None:
        """Build the event for a committed decision and publish it (call only when `active`)."""
        self.publish(build_event(request, result, state, seconds, self.want_prompts, detail))

    def stats(self) -> dict[str, Any]:
        return {"published": self.published, "subscriptions": len(self._subs),
                "dropped": sum(s.dropped for s in self._subs)}


def _without_prompt(event: DecisionEvent) -> DecisionEvent:
    return replace(event, prompt=None)
