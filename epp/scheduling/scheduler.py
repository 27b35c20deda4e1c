"""The scheduler: one decision per request, driven by a ProfileHandler over named profiles.

Cycle (GIE EPP style):
  1. restrict the endpoints to the request's subset hint (`LLMRequest.candidates`), so no
     plugin can ever pick outside it;
  2. ask the profile handler which profiles to run, run them, and repeat with the results
     so far until it returns none (a P/D handler runs "decode", then maybe "prefill");
  3. let the profile handler turn the results into the SchedulingResult (it may add headers
     such as x-prefiller-host-port, or raise SchedulingError).
`pre_request` runs the PreRequest plugins once the server commits to the decision and
`post_response` runs the PostResponse plugins when the response completes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from time import perf_counter_ns
from typing import Any

from epp.datastore.endpoint import Endpoint
from epp.scheduling.interfaces import (
    PluginTimingObserver,
    PostResponse,
    PreRequest,
    ProfileHandler,
    ResponseReceived,
)
from epp.scheduling.profile import SchedulerProfile
from epp.scheduling.types import (
    CycleState,
    LLMRequest,
    ProfileRunResult,
    SchedulingError,
    SchedulingResult,
)

log = logging.getLogger(__name__)


class Scheduler:
    __slots__ = (
        "_max_rounds",
        "observer",
        "post_response_plugins",
        "pre_request_plugins",
        "profile_handler",
        "profiles",
        "response_received_plugins",
    )

    def __init__(
        self,
        profiles: Mapping[str, SchedulerProfile] | Iterable[SchedulerProfile],
        profile_handler: ProfileHandler,
        pre_request_plugins: Sequence[PreRequest] = (),
        post_response_plugins: Sequence[PostResponse] = (),
        observer: PluginTimingObserver | None = None,
        response_received_plugins: Sequence[ResponseReceived] = (),
    ) -> None:
        if isinstance(profiles, Mapping):
            self.profiles: dict[str, SchedulerProfile] = dict(profiles)
        else:
            self.profiles = {}
            for profile in profiles:
                if profile.name in self.profiles:
                    raise ValueError(f"duplicate scheduling profile name {profile.name!r}")
                self.profiles[profile.name] = profile
        if not self.profiles:
            raise ValueError("a scheduler needs at least one scheduling profile")
        self.profile_handler = profile_handler
        self.pre_request_plugins: tuple[PreRequest, ...] = tuple(pre_request_plugins)
        self.post_response_plugins: tuple[PostResponse, ...] = tuple(post_response_plugins)
        self.response_received_plugins: tuple[ResponseReceived, ...] = tuple(response_received_plugins)
        # A handler that keeps asking for new profiles is a bug; bound the loop by the
        # number of distinct profiles (each can run once per cycle).
        self._max_rounds = len(self.profiles) + 1
        self.observer: PluginTimingObserver | None = None
        self.set_observer(observer)

    def set_observer(self, observer: PluginTimingObserver | None) -> None:
        """Install (or remove) the plugin-duration hook on the scheduler and its profiles."""
        self.observer = observer
        for profile in self.profiles.values():
            profile.observer = observer

    # --- the decision -----------------------------------------------------------------------
    def schedule(
        self, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> tuple[SchedulingResult, CycleState]:
        """Decide where `request` goes. Raises SchedulingError when nothing can serve it."""
        candidates = request.candidates
        if candidates is not None:
            endpoints = [ep for ep in endpoints if ep.hostport in candidates]
            if not endpoints:
                raise SchedulingError(
                    f"request {request.request_id}: none of the {len(candidates)} endpoints of "
                    "the subset hint is a ready endpoint of the pool"
                )
        elif not endpoints:
            raise SchedulingError(f"request {request.request_id}: the pool has no ready endpoints")

        state = CycleState()
        handler = self.profile_handler
        observer = self.observer
        results: dict[str, ProfileRunResult | None] = {}
        for _ in range(self._max_rounds):
            if observer is None:
                to_run = handler.pick_profiles(state, request, self.profiles, results)
            else:
                t0 = perf_counter_ns()
                to_run = handler.pick_profiles(state, request, self.profiles, results)
                observer.observe_plugin(
                    "ProfileHandler", handler.type_name, handler.name, perf_counter_ns() - t0
                )
            ran = False
            for name, profile in to_run.items():
                if name in results:
                    continue  # each profile runs at most once per cycle
                results[name] = profile.run(state, request, endpoints)
                ran = True
            if not ran:
                break
        else:
            log.warning(
                "profile handler %r kept selecting profiles after %d rounds; stopping",
                handler.name, self._max_rounds,
            )

        if observer is None:
            result = handler.process_results(state, request, results)
        else:
            t0 = perf_counter_ns()
            result = handler.process_results(state, request, results)
            observer.observe_plugin(
                "ProfileHandler", handler.type_name, handler.name, perf_counter_ns() - t0
            )
        primary = result.primary
        if primary is None or not primary.targets:
            raise SchedulingError(
                f"request {request.request_id}: no endpoint passed the filters of scheduling "
                f"profile {result.primary_profile!r}"
            )
        return result, state

    # --- request lifecycle hooks ------------------------------------------------------------
    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        """Run the PreRequest plugins (e.g. record prefix hashes for the picked endpoint)."""
        observer = self.observer
        for plugin in self.pre_request_plugins:
            t0 = perf_counter_ns()
            try:
                plugin.pre_request(state, request, result)
            except Exception:
                # A bookkeeping hook must not fail a request that already has a target.
                log.exception("pre-request plugin %r failed", plugin.name)
            if observer is not None:
                observer.observe_plugin("PreRequest", plugin.type_name, plugin.name, perf_counter_ns() - t0)

    def response_received(self, request: LLMRequest, target: Endpoint, status: int) -> None:
        """Run the ResponseReceived plugins at the response's first byte (ResponseReceived)."""
        observer = self.observer
        for plugin in self.response_received_plugins:
            t0 = perf_counter_ns()
            try:
                plugin.response_received(request, target, status)
            except Exception:
                log.exception("response-received plugin %r failed", plugin.name)
            if observer is not None:
                observer.observe_plugin(
                    "ResponseReceived", plugin.type_name, plugin.name, perf_counter_ns() - t0
                )

    def post_response(
        self, request: LLMRequest, target: Endpoint, response: Mapping[str, Any]
    ) -> None:
        """Run the PostResponse plugins once the response to `request` completed."""
        observer = self.observer
        for plugin in self.post_response_plugins:
            t0 = perf_counter_ns()
            try:
                plugin.post_response(request, target, response)
            except Exception:
                log.exception("post-response plugin %r failed", plugin.name)
            if observer is not None:
                observer.observe_plugin(
                    "PostResponse", plugin.type_name, plugin.name, perf_counter_ns() - t0
                )
