"""`pd-profile-handler`: disaggregated prefill/decode, compatible with llm-d.

Runs the decode profile first (its pick is the destination, so it is the primary
profile), then decides whether a remote prefill pays off: if the prompt tokens that are
NOT already cached on the chosen decode pod reach the threshold, it runs the prefill
profile and names the prefill pod in the `x-prefiller-host-port` request header, which
the routing sidecar in front of the decode pod acts on (epp/sidecar). Otherwise the decode
pod prefills locally: a short or well-cached prompt costs less there than a KV transfer.

How many prompt tokens the decode pod already holds is read from the CycleState, where
the prefix-cache scorer leaves it (contract below); without it the whole prompt counts as
uncached and its length is estimated at `charactersPerToken` characters per token.

CycleState contract (keys prefixed with the prefix plugin's instance name,
`prefixPluginName`, default "prefix-cache-scorer"):
  "<prefixPluginName>.cached-tokens": Mapping[str, int], Endpoint.key -> prompt tokens
      already in that endpoint's prefix cache (matched blocks x block size).
  "<prefixPluginName>.prompt-tokens": int, prompt length in tokens when the scorer
      tokenized the prompt (optional; replaces the characters/token estimate).

Parameters (camelCase in the config): decodeProfile, prefillProfile, nonCachedTokens
(threshold in tokens), threshold (llm-d's older parameter, in prompt characters; give
one or the other), charactersPerToken, prefixPluginName, hashBlockSize (accepted so llm-d
configs load; cached amounts come in tokens here, so it is not needed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from epp.datastore.endpoint import Endpoint
from epp.scheduling.plugins import pd_metrics as m
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import (
    CACHED_TOKENS_SUFFIX,
    CycleState,
    LLMRequest,
    ProfileRunResult,
    SchedulingError,
    SchedulingResult,
)

if TYPE_CHECKING:
    from epp.scheduling.profile import SchedulerProfile

log = logging.getLogger(__name__)

PREFILLER_HEADER = "x-prefiller-host-port"
PROMPT_TOKENS_SUFFIX = ".prompt-tokens"


@dataclass(slots=True, frozen=True)
class PDDecision:
    """What the handler decided for one request (kept in the CycleState for later plugins)."""

    prompt_tokens: int
    cached_tokens: int
    remote_prefill: bool
    skip_reason: str = ""

    @property
    def uncached_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens


@register_plugin
class PDProfileHandler:
    type_name: ClassVar[str] = "pd-profile-handler"
    consumes: ClassVar[tuple[str, ...]] = ("labels", "prefix-cache state")

    @dataclass(slots=True)
    class Params:
        decode_profile: str = "decode"
        prefill_profile: str = "prefill"
        non_cached_tokens: int | None = None
        threshold: int | None = None  # llm-d's older threshold, in prompt characters
        characters_per_token: float = 4.0
        prefix_plugin_name: str = "prefix-cache-scorer"
        hash_block_size: int = 64
        # Prefill locally on the decode pod instead when the chosen prefill pod already has this
        # many requests running or waiting (its backlog would cost more TTFT than the decode
        # pod's own prefill). 0 disables the check (llm-d's behaviour).
        max_prefill_backlog: int = 0

        def validate(self) -> None:
            if not self.decode_profile or not self.prefill_profile:
                raise ValueError("'decodeProfile' and 'prefillProfile' must be non-empty")
            if self.decode_profile == self.prefill_profile:
                raise ValueError(f"'decodeProfile' and 'prefillProfile' are both {self.decode_profile!r}")
            if self.non_cached_tokens is not None and self.threshold is not None:
                raise ValueError(
                    "give either 'nonCachedTokens' (tokens) or 'threshold' (characters), not both"
                )
            if (self.non_cached_tokens or 0) < 0 or (self.threshold or 0) < 0:
                raise ValueError("the threshold must be >= 0")
            if self.characters_per_token <= 0:
                raise ValueError(f"'charactersPerToken' must be > 0, got {self.characters_per_token}")
            if self.max_prefill_backlog < 0:
                raise ValueError(f"'maxPrefillBacklog' must be >= 0, got {self.max_prefill_backlog}")
            if self.hash_block_size <= 0:
                raise ValueError(f"'hashBlockSize' must be > 0, got {self.hash_block_size}")

        def threshold_tokens(self) -> int:
            if self.non_cached_tokens is not None:
                return self.non_cached_tokens
            if self.threshold is not None:
                return int(self.threshold / self.characters_per_token)
            return 0  # llm-d's default: always disaggregate when a prefill pod exists

    def __init__(self, *, name: str, params: PDProfileHandler.Params, ctx: PluginContext) -> None:
        self.name = name
        self.params = params
        self.decode_profile = params.decode_profile
        self.prefill_profile = params.prefill_profile
        self.threshold_tokens = params.threshold_tokens()
        self._cached_key = params.prefix_plugin_name + CACHED_TOKENS_SUFFIX
        self._prompt_key = params.prefix_plugin_name + PROMPT_TOKENS_SUFFIX
        self.decision_key = f"{self.type_name}/{name}.decision"
        self.metrics = m.pd_metrics(ctx.services)

    def validate_profiles(self, profiles: Mapping[str, SchedulerProfile]) -> None:
        """Config-load check: both profiles this handler names must be configured."""
        missing = [p for p in (self.decode_profile, self.prefill_profile) if p not in profiles]
        if missing:
            raise ValueError(
                f"scheduling profile(s) {', '.join(repr(p) for p in missing)} not configured "
                f"(have: {', '.join(sorted(profiles)) or 'none'}); set 'decodeProfile'/'prefillProfile' "
                "or add the profiles"
            )

    # --- ProfileHandler -------------------------------------------------------------------
    def pick_profiles(
        self,
        state: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulerProfile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulerProfile]:
        if self.decode_profile not in results:
            decode = profiles.get(self.decode_profile)
            return {} if decode is None else {self.decode_profile: decode}
        decode_result = results[self.decode_profile]
        if not decode_result or not decode_result.targets or self.prefill_profile in results:
            return {}
        prefill = profiles.get(self.prefill_profile)
        decision = self._decide(state, request, decode_result.targets[0], prefill is not None)
        state[self.decision_key] = decision
        if not decision.remote_prefill or prefill is None:
            return {}
        return {self.prefill_profile: prefill}

    def process_results(
        self,
        state: CycleState,
        request: LLMRequest,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        decode_result = results.get(self.decode_profile)
        if not decode_result or not decode_result.targets:
            raise SchedulingError(
                f"no decode endpoint available for model {request.target_model!r} "
                f"(profile {self.decode_profile!r} of {self.type_name} {self.name!r} found none)"
            )
        self.metrics.profile_runs.labels(self.decode_profile).inc()
        profile_results: dict[str, ProfileRunResult | None] = {self.decode_profile: decode_result}
        headers: dict[str, str] = {}

        decision: PDDecision | None = state.get(self.decision_key)
        skip_reason = decision.skip_reason if decision is not None else ""
        if self.prefill_profile in results:
            self.metrics.profile_runs.labels(self.prefill_profile).inc()
            prefill_target = self._prefill_target(results[self.prefill_profile], decode_result.targets[0])
            if prefill_target is None:
                skip_reason = self._why_no_prefill_target(results[self.prefill_profile])
            elif self._prefill_backlogged(prefill_target):
                skip_reason = m.SKIP_PREFILL_BACKLOG
            else:
                headers[PREFILLER_HEADER] = prefill_target.hostport
                profile_results[self.prefill_profile] = results[self.prefill_profile]

        remote = PREFILLER_HEADER in headers
        if decision is not None:
            if remote != decision.remote_prefill:
                decision = PDDecision(decision.prompt_tokens, decision.cached_tokens, remote, skip_reason)
                state[self.decision_key] = decision
            self.metrics.uncached_tokens.observe(decision.uncached_tokens)
        if not remote and skip_reason:
            self.metrics.prefill_skipped.labels(skip_reason).inc()
        self.metrics.decisions.labels(
            m.DECISION_PREFILL_DECODE if remote else m.DECISION_DECODE_ONLY, request.target_model
        ).inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "pd decision request=%s decode=%s prefill=%s reason=%s",
                request.request_id, decode_result.targets[0].hostport,
                headers.get(PREFILLER_HEADER, "-"), skip_reason or "-",
            )
        return SchedulingResult(
            profile_results=profile_results, primary_profile=self.decode_profile, headers=headers
        )

    # --- decision -------------------------------------------------------------------------
    def _decide(
        self, state: CycleState, request: LLMRequest, decode_target: Endpoint, has_prefill_profile: bool
    ) -> PDDecision:
        prompt_tokens = self._prompt_tokens(state, request)
        cached = min(self._cached_tokens(state, decode_target), prompt_tokens)
        if not has_prefill_profile:
            return PDDecision(prompt_tokens, cached, False, m.SKIP_NO_PREFILL_PROFILE)
        if prompt_tokens - cached < self.threshold_tokens:
            return PDDecision(prompt_tokens, cached, False, m.SKIP_BELOW_THRESHOLD)
        return PDDecision(prompt_tokens, cached, True)

    def _prompt_tokens(self, state: CycleState, request: LLMRequest) -> int:
        counted = state.get(self._prompt_key)
        if isinstance(counted, int) and counted >= 0:
            return counted
        return int(len(request.prompt_text()) / self.params.characters_per_token)

    def _cached_tokens(self, state: CycleState, endpoint: Endpoint) -> int:
        per_endpoint: Any = state.get(self._cached_key)
        if not isinstance(per_endpoint, Mapping):
            return 0
        cached = per_endpoint.get(endpoint.key, 0)
        return cached if isinstance(cached, int) and cached > 0 else 0

    def _prefill_backlogged(self, prefill: Endpoint) -> bool:
        limit = self.params.max_prefill_backlog
        if limit <= 0:
            return False
        backlog = prefill.metrics.waiting_queue_size + prefill.metrics.running_requests
        return backlog >= limit

    @staticmethod
    def _prefill_target(result: ProfileRunResult | None, decode_target: Endpoint) -> Endpoint | None:
        """Best prefill pick that is not the decode pod itself (a "both" pod may be both)."""
        if result is None:
            return None
        for ep in result.targets:
            if ep is not decode_target and ep.hostport != decode_target.hostport:
                return ep
        return None

    @staticmethod
    def _why_no_prefill_target(result: ProfileRunResult | None) -> str:
        return m.SKIP_SAME_ENDPOINT if result is not None and result.targets else m.SKIP_NO_PREFILL_ENDPOINT
