"""Extension points of the scheduler, one small Protocol each (GIE / kube-scheduler style).

Every plugin has a `type_name` (registry key, e.g. "queue-scorer") and an instance `name`
(from the config; defaults to the type name) so one type can be configured twice.
`consumes` lists the endpoint data a plugin reads (documentation and validation aid).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from epp.datastore.endpoint import Endpoint
from epp.scheduling.types import (
    CycleState,
    LLMRequest,
    ProfileRunResult,
    SchedulingResult,
    ScoredEndpoint,
)

if TYPE_CHECKING:
    from epp.scheduling.profile import SchedulerProfile


@runtime_checkable
class Plugin(Protocol):
    type_name: ClassVar[str]
    name: str


@runtime_checkable
class Filter(Plugin, Protocol):
    def filter(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[Endpoint]:
        """Return the endpoints that may serve the request (a subset, order kept)."""
        ...


@runtime_checkable
class Scorer(Plugin, Protocol):
    def score(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> Sequence[float]:
        """Return one score in [0, 1] per endpoint, in the same order (higher is better)."""
        ...


@runtime_checkable
class Picker(Plugin, Protocol):
    def pick(
        self, state: CycleState, request: LLMRequest, scored: Sequence[ScoredEndpoint]
    ) -> ProfileRunResult:
        """Choose the target (and ordered fallbacks) from the scored endpoints."""
        ...


@runtime_checkable
class ScoresPicker(Picker, Protocol):
    """Optional fast path of a Picker: pick from the endpoints and their weighted totals as two
    parallel sequences, so the profile does not build one ScoredEndpoint per endpoint on
    every decision. Must choose exactly as `pick` would on the same input."""

    def pick_scores(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint],
        scores: Sequence[float],
    ) -> ProfileRunResult: ...


@runtime_checkable
class ProfileHandler(Plugin, Protocol):
    def pick_profiles(
        self,
        state: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulerProfile],
        results: Mapping[str, ProfileRunResult | None],
    ) -> Mapping[str, SchedulerProfile]:
        """Profiles to run next given the results so far; empty ends the cycle."""
        ...

    def process_results(
        self,
        state: CycleState,
        request: LLMRequest,
        results: Mapping[str, ProfileRunResult | None],
    ) -> SchedulingResult:
        """Combine the profile results into the decision (raises SchedulingError if none)."""
        ...


@runtime_checkable
class PreRequest(Plugin, Protocol):
    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        """Called once the decision is final, before the request is sent upstream."""
        ...


@runtime_checkable
class ResponseReceived(Plugin, Protocol):
    def response_received(self, request: LLMRequest, target: Endpoint, status: int) -> None:
        """Called at the first byte of the response (GIE's ResponseReceived): a streamed
        response's first body chunk, its first token, when Envoy streams response bodies to
        ext_proc (vLLM sends a stream's headers before its prefill); otherwise, and for a
        response not streamed or an error, its headers. Never without response headers."""
        ...


@runtime_checkable
class PostResponse(Plugin, Protocol):
    def post_response(
        self, request: LLMRequest, target: Endpoint, response: Mapping[str, Any]
    ) -> None:
        """Called when the response completed. `response` holds what the server reported:
        "status" (int), and when known "prompt_tokens", "completion_tokens", "cached_tokens"."""
        ...


@runtime_checkable
class PluginTimingObserver(Protocol):
    """Receives how long each plugin call took (the scheduler does not import prometheus).

    `extension_point` is one of "Filter", "Scorer", "Picker", "ProfileHandler", "PreRequest",
    "ResponseReceived", "PostResponse"; `plugin_type` / `plugin_name` are the plugin's type name and instance name.
    Called on the hot path: keep it cheap (e.g. a histogram observe).
    """

    def observe_plugin(
        self, extension_point: str, plugin_type: str, plugin_name: str, duration_ns: int
    ) -> None: ...


@runtime_checkable
class ProfileValidator(Protocol):
    """Optional extra of a ProfileHandler: checks the configured profiles when the config
    loads (e.g. a P/D handler requiring "prefill" and "decode"). Raise ValueError to reject."""

    def validate_profiles(self, profiles: Mapping[str, SchedulerProfile]) -> None: ...


@runtime_checkable
class PrefixMatchProducer(Scorer, Protocol):
    """A prefix scorer whose cycle's matches others may ask for before the filters run (llm-d:
    the prefix plugin as the data producer of PrefixCacheMatchInfo)."""

    cached_tokens_key: str

    def produce_prefix_matches(self, state: CycleState, request: LLMRequest,
                               endpoints: Sequence[Endpoint]) -> None:
        """Put each of `endpoints`' cached prompt tokens in `state` under `cached_tokens_key`
        (epp.scheduling.types.cached_prompt_tokens reads it), keeping those already there from
        an earlier profile of the cycle; `score` in the same cycle reuses what it can."""
        ...


@runtime_checkable
class PluginBinder(Protocol):
    """Optional extra of any plugin: told the config's other plugins by name once all are
    built (a plugin that names another in its parameters resolves it here). Raise ValueError
    to reject the config."""

    def bind_plugins(self, plugins: Mapping[str, Any]) -> None: ...
