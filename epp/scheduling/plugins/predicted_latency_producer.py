"""predicted-latency-producer: trains the pool's latency predictor from what it observes.

The producer of predicted-latency routing (llm-d's `predicted-latency-producer` plays the same
part; there the model is XGBoost in sidecars, here an in-process ridge regression, see
epp/latency/predictor.py). It configures the process's LatencyRuntime and feeds it:

- PreRequest: the decision is final; charge the chosen pod's prefill / decode ledger and keep
  the features and the predictions of the chosen pod for the request;
- ResponseReceived: the first byte, for a streamed response its first body chunk, which
  vLLM sends with the first token (its headers come before the prefill; epp/server/extproc.py):
  observed TTFT, one TTFT sample;
- PostResponse: the stream ended; with the usage's completion_tokens, observed TPOT =
  (end - first byte) / (completion_tokens - 1), one TPOT sample.

With `epp serve --workers N` the runtime tells the other workers of each request's dispatch,
first byte and end, and queues and learns from theirs (epp/latency/sharing.py).

TTFT and TPOT need Envoy to stream response bodies to ext_proc (`response_body_mode:
STREAMED`): the first chunk times TTFT, the usage gives TPOT. With the headers alone the EPP
takes them for the first byte and warns once (against vLLM, TTFT then reads near zero);
without them the predictor never trains and the latency plugins keep falling back to the
weighted scorers.

Parameters (all optional):
    sloDefaults: {objective-or-model: {ttftMs: 500, tpotMs: 50}}  default SLOs per
        InferenceObjective (name from x-llm-d-inference-objective or its alias, else the model name)
    scoreRequestsWithoutSLO: false  true: requests without SLO go to the pod with the lowest
        predicted latency too (false: they are routed as without the latency plugins)
    stateFile: ""  warm start: load the model at start, save it every saveIntervalS
    prefixMatchInfoProducerName: ""  the prefix scorer (prefix-cache-scorer or
        precise-prefix-cache-scorer, by plugin name) whose matches the predictions count from
        the cycle's first prediction on, so the admitter and the headroom filter, which run
        before any scorer, see a pod's cached prompt tokens too (llm-d's parameter of the same
        name). "" (default): the config's only prefix scorer, none when it has several or none
    deferBehindPrefillTokens: 0  off; N: a request sent to a pod that is prefilling a prompt of
        at least N new tokens waits in the EPP for that prompt's first token, so that it does not
        lengthen that prompt's last prefill step (vLLM packs waiting prompts into it); needs the
        latency-scorer's maxNumBatchedTokens (docs/latency-routing.md, "Deferral behind a long prefill")
    maxDeferS: 10  the longest a request waits so; Envoy's ext_proc message_timeout must be longer
    window, minSamples, minPodSamples, ridge, retrainIntervalS, saveIntervalS: the predictor
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from epp.datastore.endpoint import Endpoint
from epp.latency import native
from epp.latency.predictor import PredictorConfig
from epp.latency.runtime import Deferral, LatencyRuntime, latency_runtime
from epp.latency.sharing import LatencySharing
from epp.latency.slo import MAX_SLO_MS, ObjectiveSLO
from epp.scheduling.interfaces import PrefixMatchProducer
from epp.scheduling.plugins.prefix_cache_scorer import PEER_BUS_KEY
from epp.scheduling.registry import PluginContext, plugin_of_kind, register_plugin
from epp.scheduling.types import CycleState, LLMRequest, SchedulingResult

log = logging.getLogger(__name__)


def _objective_slos(raw: Mapping[str, Any]) -> dict[str, ObjectiveSLO]:
    out: dict[str, ObjectiveSLO] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise ValueError(f"sloDefaults[{name!r}] must be a mapping with ttftMs and/or tpotMs")
        values: dict[str, float | None] = {"ttftMs": None, "tpotMs": None}
        for key, value in entry.items():
            if key not in values:
                raise ValueError(f"sloDefaults[{name!r}]: unknown field {key!r} (known: ttftMs, tpotMs)")
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_SLO_MS \
                    or not math.isfinite(value):
                raise ValueError(f"sloDefaults[{name!r}].{key} must be a positive number of milliseconds, "
                                 f"got {value!r}")
            values[key] = float(value)
        if values["ttftMs"] is None and values["tpotMs"] is None:
            raise ValueError(f"sloDefaults[{name!r}] sets neither ttftMs nor tpotMs")
        out[str(name)] = ObjectiveSLO(values["ttftMs"], values["tpotMs"])
    return out


async def _deferred(deferral: Deferral, runtime: LatencyRuntime) -> None:
    """Wait for the deferral's prefill to have its first byte, or for its deadline."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    deferral.add_waiter(waiter)
    try:
        await asyncio.wait_for(waiter, max(0.0, deferral.deadline - runtime.clock()))
    except TimeoutError:
        runtime.end_deferral(deferral)


@register_plugin
class PredictedLatencyProducer:
    type_name: ClassVar[str] = "predicted-latency-producer"
    consumes: ClassVar[tuple[str, ...]] = (
        "metrics.waiting_queue_size", "metrics.running_requests", "metrics.kv_cache_usage",
        "inflight.requests", "prefix.cached_tokens")

    @dataclass(slots=True)
    class Params:
        slo_defaults: dict[str, Any] = field(default_factory=dict)
        score_requests_without_slo: bool = False
        state_file: str = ""
        window: int = 512
        min_samples: int = 24
        min_pod_samples: int = 48
        ridge: float = 1e-3
        retrain_interval_s: float = 0.5
        save_interval_s: float = 30.0
        prefix_match_info_producer_name: str = ""
        defer_behind_prefill_tokens: int = 0
        max_defer_s: float = 10.0

        def validate(self) -> None:
            _objective_slos(self.slo_defaults)
            if self.defer_behind_prefill_tokens < 0:
                raise ValueError("parameter deferBehindPrefillTokens must be >= 0 (0: off), "
                                 f"got {self.defer_behind_prefill_tokens}")
            if not 0.0 < self.max_defer_s <= 600.0:
                raise ValueError(f"parameter maxDeferS must be in (0, 600] seconds, got {self.max_defer_s}")
            try:
                self.predictor_config().validate()
            except ValueError as e:
                raise ValueError(f"parameter {e}") from None

        def predictor_config(self) -> PredictorConfig:
            return PredictorConfig(window=self.window, min_samples=self.min_samples,
                                   min_pod_samples=self.min_pod_samples, ridge=self.ridge,
                                   retrain_interval_s=self.retrain_interval_s,
                                   save_interval_s=self.save_interval_s)

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        self.runtime: LatencyRuntime = latency_runtime(ctx.services if ctx is not None else {})
        rt = self.runtime
        rt.objective_slos = _objective_slos(self.params.slo_defaults)
        rt.score_without_slo = self.params.score_requests_without_slo
        rt.defer_min_ktokens = self.params.defer_behind_prefill_tokens / 1000.0
        rt.max_defer_s = self.params.max_defer_s
        rt.predictor.config = self.params.predictor_config()
        # A config reload builds a new producer on the same runtime: keep what it learned.
        if rt.predictor.version == 0:
            # Once per runtime: which modules decide (epp/latency/native.py), and why.
            log.info("predicted-latency routing: latency modules %s", native.status().reason)
            rt.warm_start(Path(self.params.state_file) if self.params.state_file else None)
        else:
            rt.predictor.start()
        bus = ctx.services.get(PEER_BUS_KEY) if ctx is not None else None
        if bus is not None and getattr(bus, "worker_count", 1) > 1:
            # Every worker queues, times and learns from all workers' requests (sharing.py).
            if rt.peers is None:
                log.info("predicted-latency routing: sharing requests with %d other workers",
                         bus.worker_count - 1)
            LatencySharing.attach(bus, rt)

    def bind_plugins(self, plugins: Mapping[str, Any]) -> None:
        """The prefix scorer the runtime asks for the cycle's matches before its first
        prediction (prefixMatchInfoProducerName, or the config's only prefix scorer)."""
        wanted = self.params.prefix_match_info_producer_name
        if wanted:
            try:
                producer = plugin_of_kind(plugins, wanted, PrefixMatchProducer,
                                          "a prefix scorer (prefix-cache-scorer, precise-prefix-cache-scorer)")
            except ValueError as e:
                raise ValueError(f"parameter 'prefixMatchInfoProducerName': {e}") from None
        else:
            found = [p for p in plugins.values() if isinstance(p, PrefixMatchProducer)]
            producer = found[0] if len(found) == 1 else None
            if len(found) > 1:
                log.info("predicted-latency routing: %d prefix scorers configured and no "
                         "prefixMatchInfoProducerName: predictions count cached tokens only once a "
                         "prefix scorer has run in the cycle", len(found))
        self.runtime.prefix_producer = producer

    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        primary = result.primary
        if primary is not None and primary.targets:
            deferral = self.runtime.on_dispatch(state, request, primary.targets[0])
            if deferral is not None:
                result.dispatch_after = _deferred(deferral, self.runtime)

    def response_received(self, request: LLMRequest, target: Endpoint, status: int) -> None:
        self.runtime.on_first_byte(request, status)

    def post_response(self, request: LLMRequest, target: Endpoint, response: Mapping[str, Any]) -> None:
        self.runtime.on_complete(request, response)
