"""precise-prefix-cache-scorer: prefix-cache affinity from the pods' own KV events.

The prompt is tokenized exactly as the pod does it (completions: the prompt; chat: the chat
template, then encode), cut into vLLM blocks and hashed with vLLM's chained block hash
(same algo, block size and seed as the pods), then looked up in the KV-block index that the
pods' KV events keep current (epp.prefixcache). Score = longest run of leading blocks the pod
holds / blocks of the prompt, in [0, 1].

Parameters follow llm-d's plugin of the same name (tokenProcessorConfig, indexerConfig,
kvEventsConfig; see epp.prefixcache.config and docs/kv-events.md), plus:
- `tokenizer`: the model's tokenizer directory (tokenizer.json + tokenizer_config.json: the
  pod's model path or a mounted volume; the chat template is rendered locally), or
  "vllm-tokenize" (ask the pods' own /tokenize, cached per conversation prefix), or "simple"
  (the simulator's fallback, which matches no real model); defaults to
  indexerConfig.tokenizersPoolConfig.modelName, else "simple". See epp.tokenization.
- `approximateFallback` (default true): pods that publish no events (yet), or whose view is
  being recovered after a gap, are scored by an embedded approximate prefix-cache-scorer
  that learns from this EPP's own routing decisions.
- `maxPrefixBlocks`: hash at most this many leading blocks (bounds work on huge prompts).
- `hashCheck`: {enabled, threshold, minSamples, window} of the hash-settings mismatch check.
- `speculativeIndexing` / `speculativeTtl` (llm-d: speculativeTTL; default off / "2s"): after
  a decision, the request's blocks are assumed cached on the chosen pod for the TTL, so a
  burst of requests sharing a new prefix follows the first one instead of racing ahead of
  its KV events.

CycleState: the tokenization and hashes are computed once per cycle (shared by every profile
and by the pre-request / post-response hooks); like prefix-cache-scorer it publishes
"<name>.cached-tokens" (Endpoint.key -> cached prompt tokens) and "<name>.prompt-tokens"
for the P/D profile handler, here with exact token counts.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from epp.datastore.endpoint import Endpoint
from epp.prefixcache.block_hash import BlockHasher, fold_hash, lora_extra_keys
from epp.prefixcache.config import PreciseSettings, parse_settings
from epp.prefixcache.hybrid import hybrid_hit
from epp.prefixcache.index import BlockKey, InMemoryKVBlockIndex
from epp.prefixcache.runtime import KVEventsRuntime, get_or_create_runtime
from epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer
from epp.scheduling.registry import ConfigError, PluginContext, register_plugin
from epp.scheduling.types import CACHED_TOKENS_SUFFIX, CycleState, LLMRequest, SchedulingResult
from epp.tokenization.chat_template import ChatTemplateError
from epp.tokenization.factory import REMOTE, load_prompt_tokenizer
from epp.tokenization.prompt import PromptTokenizer, request_token_ids

log = logging.getLogger(__name__)

PROMPT_TOKENS_SUFFIX = ".prompt-tokens"
MAX_TRACKED_PREDICTIONS = 10_000
MAX_SPECULATIVE_BLOCKS = 200_000
MAX_REMEMBERED_ADAPTERS = 10_000
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def parse_duration(value: str | float | int) -> float:
    """Seconds from a number or a Go-style duration string ("2s", "500ms", "1m")."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.match(str(value))
    if match is None:
        raise ValueError(f"speculativeTTL must be a duration like '2s' or '500ms', got {value!r}")
    number = float(match.group(1))
    return {"ms": number / 1000, "m": number * 60}.get(match.group(2) or "s", number)


@dataclass(slots=True)
class PreciseCycleState:
    hashes: list[BlockKey]
    prompt_tokens: int
    matched_blocks: dict[str, int] = field(default_factory=dict)  # endpoint key -> blocks
    # The last score() of this cycle and the candidates it was for: the latency runtime asks
    # for the matches before the filters (produce_prefix_matches), and when no filter drops
    # a candidate the profile's score() gets the same sequence.
    scored_for: Sequence[Endpoint] | None = None
    scores: list[float] = field(default_factory=list)


@register_plugin
class PrecisePrefixCacheScorer:
    type_name: ClassVar[str] = "precise-prefix-cache-scorer"
    consumes: ClassVar[tuple[str, ...]] = ("kvevents.index", "metrics.active_loras")

    @dataclass(slots=True)
    class Params:
        token_processor_config: dict[str, Any] = field(default_factory=dict)
        indexer_config: dict[str, Any] = field(default_factory=dict)
        kv_events_config: dict[str, Any] = field(default_factory=dict)
        hash_check: dict[str, Any] = field(default_factory=dict)
        tokenizer: str = ""
        approximate_fallback: bool = True
        max_prefix_blocks: int = 8192
        speculative_indexing: bool = False
        speculative_ttl: str | float = "2s"

        def settings(self) -> PreciseSettings:
            return parse_settings(self.token_processor_config, self.indexer_config,
                                  self.kv_events_config, self.hash_check, self.tokenizer)

        def validate(self) -> None:
            if self.max_prefix_blocks < 1:
                raise ValueError(f"maxPrefixBlocks must be >= 1, got {self.max_prefix_blocks}")
            if parse_duration(self.speculative_ttl) <= 0:
                raise ValueError("speculativeTTL must be positive")
            self.settings()

        def speculation_enabled(self) -> bool:
            # llm-d has had the flag both at the top level and under indexerConfig.
            return self.speculative_indexing or self.indexer_config.get("speculativeIndexing") is True

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        if ctx is None:
            raise ValueError(f"{self.type_name} needs a PluginContext (datastore and services)")
        self.name = name
        self.params = params if params is not None else self.Params()
        where = f"{ctx.source}: plugin {name!r} ({self.type_name})"
        settings = self.params.settings()
        self.settings = settings
        tp = settings.token_processor
        try:
            self.hasher = BlockHasher(tp.hash_algo, tp.block_size, tp.seed())
        except (RuntimeError, ValueError) as e:  # e.g. xxhash not installed
            raise ConfigError(f"{where}: tokenProcessorConfig.hashAlgo: {e}") from None
        self.base_models = frozenset(tp.base_models)
        # Adapters some pod reported in its lora_requests_info metric, remembered (an idle
        # adapter's blocks stay cached after it leaves the running/waiting lists).
        self._metric_adapters: set[str] = set()
        tokenizer_key = f"tokenizer/{settings.tokenizer}"
        tokenizer: PromptTokenizer | None = ctx.services.get(tokenizer_key)
        if tokenizer is None:
            datastore = ctx.datastore

            def pods() -> list[str]:  # only for "vllm-tokenize": any healthy pod of the pool
                return [f"http://{ep.hostport}" for ep in datastore.healthy_endpoints()]

            try:
                tokenizer = load_prompt_tokenizer(settings.tokenizer, pods if settings.tokenizer == REMOTE else None)
            except ValueError as e:
                raise ValueError(f"{where}: tokenizer: {e}") from None
            ctx.services[tokenizer_key] = tokenizer
        self.tokenizer = tokenizer
        self.runtime: KVEventsRuntime = get_or_create_runtime(ctx.datastore, ctx.services, settings, where)
        self.approximate: PrefixCacheScorer | None = (
            PrefixCacheScorer(name=f"{name}/approximate", ctx=ctx) if self.params.approximate_fallback
            else None
        )
        self.state_key = f"{self.type_name}/{name}"
        self.cached_tokens_key = f"{name}{CACHED_TOKENS_SUFFIX}"
        self.prompt_tokens_key = f"{name}{PROMPT_TOKENS_SUFFIX}"
        # request id -> (endpoint key -> predicted blocks), for the post-response hit check.
        self._predictions: OrderedDict[str, dict[str, int]] = OrderedDict()
        self.speculative: InMemoryKVBlockIndex | None = None
        self.speculative_ttl_s = parse_duration(self.params.speculative_ttl)
        self._speculation_expiry: deque[tuple[float, str, list[BlockKey]]] = deque()
        if self.params.speculation_enabled():
            self.speculative = InMemoryKVBlockIndex(max_blocks=MAX_SPECULATIVE_BLOCKS)

    # --- request side ---------------------------------------------------------------------
    def token_ids(self, request: LLMRequest) -> list[int]:
        """The prompt's token ids as the pod computes them (vLLM's defaults: BOS for text
        prompts, the model's chat template for messages, token-id prompts as given)."""
        body = request.body or {}
        if request.messages is None and "prompt" not in body:
            return self.tokenizer.completion_ids(request.prompt or "")
        return request_token_ids(self.tokenizer, body, request.messages)

    def block_hashes(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> PreciseCycleState:
        try:
            tokens = self.token_ids(request)
        except (ChatTemplateError, ValueError, TypeError) as e:
            log.debug("%s: cannot tokenize request %s: %s", self.name, request.request_id, e)
            return PreciseCycleState([], 0)
        size = self.hasher.block_size
        limit = self.params.max_prefix_blocks * size
        salt = request.body.get("cache_salt") if request.body else None
        adapter = self.lora_adapter(request.target_model, endpoints)
        digests = self.hasher.hash_tokens(tokens[:limit], extra_keys=lora_extra_keys(adapter),
                                          cache_salt=salt if isinstance(salt, str) else None)
        return PreciseCycleState([fold_hash(d) for d in digests], len(tokens))

    def lora_adapter(self, model: str, endpoints: Sequence[Endpoint]) -> str | None:
        """The LoRA adapter a request for `model` runs with on vLLM, whose name vLLM puts in
        every block's extra keys; None for the base model.

        With `baseModels` configured this is exact: every other model name is an adapter.
        Without it, a model is an adapter once any pod reported it as one, in a KV event's
        lora_name or in its lora_requests_info metric; it stays known while idle."""
        if self.base_models:
            return None if model in self.base_models else model
        if model in self.runtime.manager.lora_names or model in self._metric_adapters:
            return model
        for ep in endpoints:
            if model in ep.metrics.active_loras or model in ep.metrics.waiting_loras:
                if len(self._metric_adapters) < MAX_REMEMBERED_ADAPTERS:
                    self._metric_adapters.add(model)
                return model
        return None

    def cycle_state(self, state: CycleState, request: LLMRequest,
                    endpoints: Sequence[Endpoint]) -> PreciseCycleState:
        cycle: PreciseCycleState | None = state.get(self.state_key)
        if cycle is None:
            cycle = self.block_hashes(request, endpoints)
            state[self.state_key] = cycle
            state[self.prompt_tokens_key] = cycle.prompt_tokens
            state[self.cached_tokens_key] = {}
        return cycle

    # --- scoring --------------------------------------------------------------------------
    def score(self, state: CycleState, request: LLMRequest,
              endpoints: Sequence[Endpoint]) -> list[float]:
        runtime = self.runtime
        runtime.start_soon()
        cycle = self.cycle_state(state, request, endpoints)
        if endpoints is cycle.scored_for:
            return list(cycle.scores)
        hashes = cycle.hashes
        total = len(hashes)
        if total == 0:
            return [0.0] * len(endpoints)
        manager = runtime.manager
        evented = [ep.key for ep in endpoints if manager.has_events(ep.key)]
        matched = self._lookup(hashes, evented)
        if self.speculative is not None and evented:
            self._expire_speculation(time.monotonic())
            for key, guessed in self.speculative.longest_prefix(hashes, evented).items():
                if guessed > matched.get(key, 0):
                    matched[key] = guessed
        cycle.matched_blocks.update({key: matched.get(key, 0) for key in evented})
        scores = [0.0] * len(endpoints)
        fallback: list[int] = []
        for i, ep in enumerate(endpoints):
            blocks = matched.get(ep.key)
            if blocks is not None:
                scores[i] = blocks / total
            elif self.approximate is not None and ep.key not in cycle.matched_blocks:
                fallback.append(i)
        if fallback and self.approximate is not None:
            subset = [endpoints[i] for i in fallback]
            for i, s in zip(fallback, self.approximate.score(state, request, subset), strict=True):
                scores[i] = s
        size = self.hasher.block_size
        cached: dict[str, int] = state[self.cached_tokens_key]
        for ep, s in zip(endpoints, scores, strict=True):
            cached[ep.key] = min(cycle.prompt_tokens, round(s * total) * size)
        cycle.scored_for, cycle.scores = endpoints, list(scores)
        return scores

    def produce_prefix_matches(self, state: CycleState, request: LLMRequest,
                               endpoints: Sequence[Endpoint]) -> None:
        """The cycle's cached tokens for `endpoints` (PrefixMatchProducer), asked by the latency
        runtime before the filters run: a score() the profile's own score() reuses when no
        filter dropped a candidate (one index lookup per decision)."""
        self.score(state, request, endpoints)

    def _lookup(self, hashes: list[BlockKey], evented: list[str]) -> dict[str, int]:
        """Matched leading blocks per pod: a data-parallel pod's best rank counts, and a hybrid
        model's groups are combined as vLLM does (epp.prefixcache.hybrid)."""
        if not evented:
            return {}
        manager = self.runtime.manager
        index = self.runtime.index
        hybrid = manager.hybrid_keys
        if not manager.has_data_parallel_pods and not hybrid:  # the common case
            return index.longest_prefix(hashes, evented)
        owner = {key: pod for pod in evented for key in manager.index_keys(pod)}
        plain = [key for key in owner if key not in hybrid]
        found = index.longest_prefix(hashes, plain) if plain else {}
        for key in owner:
            if key in hybrid:
                blocks = hybrid_hit(index, key, manager.group_specs(key), hashes)
                if blocks:
                    found[key] = blocks
        matched: dict[str, int] = {}
        for key, blocks in found.items():
            pod = owner[key]
            if blocks > matched.get(pod, 0):
                matched[pod] = blocks
        return matched

    # --- hooks ----------------------------------------------------------------------------
    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        cycle: PreciseCycleState | None = state.get(self.state_key)
        if cycle is None or not cycle.hashes:
            return
        manager = self.runtime.manager
        if self.speculative is not None:
            expires = time.monotonic() + self.speculative_ttl_s
            for profile_result in result.profile_results.values():
                if profile_result is not None and profile_result.targets:
                    key = profile_result.targets[0].key
                    if manager.has_events(key):
                        self.speculative.add_now(key, cycle.hashes)
                        self._speculation_expiry.append((expires, key, cycle.hashes))
        if self.approximate is not None:
            approx_cycle = state.get(self.approximate.state_key)
            for profile_result in result.profile_results.values():
                if profile_result is None or not profile_result.targets:
                    continue
                target = profile_result.targets[0]
                # Pods with events teach the index themselves; only the others need guessing.
                if approx_cycle is not None and not manager.has_events(target.key):
                    self.approximate.record(target, approx_cycle.hashes)
        if self.runtime.checker is not None:
            predictions = self._predictions
            predictions[request.request_id] = dict(cycle.matched_blocks)
            while len(predictions) > MAX_TRACKED_PREDICTIONS:
                predictions.popitem(last=False)

    def _expire_speculation(self, now: float) -> None:
        assert self.speculative is not None
        expiry = self._speculation_expiry
        while expiry and expiry[0][0] <= now:
            _, key, hashes = expiry.popleft()
            self.speculative.remove_now(key, hashes)

    def post_response(self, request: LLMRequest, target: Endpoint, response: Mapping[str, Any]) -> None:
        predicted = self._predictions.pop(request.request_id, None)
        checker = self.runtime.checker
        cached = response.get("cached_tokens")
        if predicted is None or checker is None or target.key not in predicted:
            return
        if isinstance(cached, int) and not isinstance(cached, bool):
            checker.check_hit(target.key, predicted[target.key], cached)
