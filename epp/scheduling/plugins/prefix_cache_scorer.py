"""prefix-cache-scorer: APPROXIMATE prefix-cache affinity (GIE semantics, no tokenizer).

The prompt text (LLMRequest.prompt_text(), UTF-8) is cut into blocks of `blockSize` bytes
(about 4 characters per token, so 64 bytes ~ one 16-token vLLM block), at most
`maxPrefixBlocksToMatch` of them; a short last block is ignored. Block i is identified by a
chained hash of the target model, the request's cache_salt and every byte up to the end of
block i, so equal hashes mean equal prefixes. The PreRequest hook remembers, per endpoint,
the hashes of the prompts it was sent, in an LRU bounded by `lruCapacityPerServer` entries
(or the endpoint's num_gpu_blocks when `autoTune` is on and the pod reports it).

Score = matched prefix blocks / prompt blocks.

Letting go (SGLang's cache-aware router thresholds; off unless configured, so the GIE
defaults behave as GIE):
- `cacheThreshold` (0 = off, SGLang 0.3): a match ratio below it scores 0. A weak match
  (a shared greeting, the first block of a template) saves little prefill, and following it
  only concentrates unrelated traffic.
- `balanceAbsThreshold` (0 = off, SGLang 64) and `balanceRelThreshold` (SGLang 1.5): an
  endpoint whose load exceeds the least loaded endpoint's by more than the absolute threshold
  AND is more than `balanceRelThreshold` times it loses its affinity (scores 0): the prefix
  it holds is worth less than the queue in front of it, so the load scorers decide. Load is
  max(requests this EPP has in flight there incl. the other workers', scraped running +
  waiting): the first moves within a burst, the second sees other EPP replicas' traffic.
  SGLang applies the thresholds globally (imbalanced pool -> pure least-load); per endpoint,
  a busy pod lets go while the others keep their affinity.

Design notes (why, not what):
- The hash is zlib's CRC-32 and Adler-32 fed incrementally, so hash i+1 continues from hash
  i: chaining costs nothing extra, runs in C, and is stable across processes (unlike
  hash()). The two 32-bit checksums are combined into one 64-bit int to keep collisions
  negligible at LRU sizes of ~1e5 entries per endpoint.
- A prompt's hashes are recorded last block first, so a prefix block is always more recent
  in the LRU than any block after it; eviction therefore removes tails before heads and
  "block i cached" implies "blocks < i cached". That makes the match length per endpoint a
  binary search (log2(blocks) dict lookups) instead of a walk over every block.
- The endpoints holding each recorded prompt's first block are kept in one small dict of
  sets, so a match looks up only those endpoints' LRUs: an LRU holds up to num_gpu_blocks
  entries, and a lookup in each of 64 of them is 64 likely cache misses. Only first blocks,
  not every block as GIE's indexer keeps, so the index stays small (a set per distinct
  first block: a few system prompts, or one per conversation held).
- Hashes are computed once per scheduling cycle and shared through CycleState under
  `state_key` (several profiles, e.g. P/D decode and prefill, reuse them).
- For the P/D profile handler the scorer also publishes "<name>.cached-tokens" in the
  CycleState: endpoint key -> prompt tokens it likely holds (matched blocks x tokens per
  block), for every endpoint scored so far in the cycle.
- `autoTune` (GIE default) derives the block size from the pods' vLLM block size
  (tokens x 4 characters) and the LRU size from their num_gpu_blocks.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from epp.datastore.endpoint import Endpoint
from epp.prefixcache.block_hash import bisect_held_prefix, held_prefix_length
from epp.scheduling.plugins._loads import cycle_request_load
from epp.scheduling.registry import PluginContext, register_plugin
from epp.scheduling.types import CACHED_TOKENS_SUFFIX, CycleState, LLMRequest, SchedulingResult

AVERAGE_CHARACTERS_PER_TOKEN = 4
PEER_BUS_KEY = "peers.bus"  # PluginContext.services key of epp.server.peers.PeerBus


def prefix_block_hashes(text: str, seed: str, block_size: int, max_blocks: int) -> list[int]:
    """Chained 64-bit hashes of the full `block_size`-byte blocks of `text` (at most
    `max_blocks`). `seed` (model name, cache salt) makes equal text of different models differ."""
    limit = block_size * max_blocks
    # A character is at least one UTF-8 byte, so slicing the str first bounds the encode cost.
    data = text[:limit].encode("utf-8", "surrogatepass")
    count = min(len(data), limit) // block_size
    if count == 0:
        return []
    seed_bytes = seed.encode("utf-8", "surrogatepass")
    crc = zlib.crc32(seed_bytes)
    adler = zlib.adler32(seed_bytes)
    view = memoryview(data)
    hashes = [0] * count
    crc32 = zlib.crc32
    adler32 = zlib.adler32
    start = 0
    for i in range(count):
        block = view[start:start + block_size]
        crc = crc32(block, crc)
        adler = adler32(block, adler)
        hashes[i] = (crc << 32) | adler
        start += block_size
    return hashes


@dataclass(slots=True)
class PrefixCacheCycleState:
    """What one prefix-cache-scorer computed in a cycle (read by its pre-request hook and by
    observability: cache hit ratio = matched_blocks[target.key] / len(hashes))."""

    hashes: list[int]
    block_size: int  # bytes per block
    tokens_per_block: int
    matched_blocks: dict[str, int] = field(default_factory=dict)  # endpoint key -> blocks
    cached_tokens: dict[str, int] = field(default_factory=dict)  # endpoint key -> tokens


@register_plugin
class PrefixCacheScorer:
    type_name: ClassVar[str] = "prefix-cache-scorer"
    consumes: ClassVar[tuple[str, ...]] = ("metrics.block_size", "metrics.num_gpu_blocks")

    @dataclass(slots=True)
    class Params:
        block_size: int = 64
        max_prefix_blocks_to_match: int = 256
        lru_capacity_per_server: int = 31250
        auto_tune: bool = True
        cache_threshold: float = 0.0
        balance_abs_threshold: int = 0
        balance_rel_threshold: float = 1.5

        def validate(self) -> None:
            for field_name in ("block_size", "max_prefix_blocks_to_match", "lru_capacity_per_server"):
                value = getattr(self, field_name)
                if value <= 0:
                    camel = "".join(
                        p if i == 0 else p.title() for i, p in enumerate(field_name.split("_"))
                    )
                    raise ValueError(f"parameter {camel!r} must be a positive integer, got {value}")
            if not 0.0 <= self.cache_threshold <= 1.0:
                raise ValueError(f"parameter 'cacheThreshold' must be within [0, 1], got {self.cache_threshold}")
            if self.balance_abs_threshold < 0:
                raise ValueError(
                    f"parameter 'balanceAbsThreshold' must be >= 0 (0 = off), got {self.balance_abs_threshold}")
            if self.balance_rel_threshold < 1.0:
                raise ValueError(
                    f"parameter 'balanceRelThreshold' must be >= 1, got {self.balance_rel_threshold}")

    def __init__(self, *, name: str = type_name, params: Params | None = None,
                 ctx: PluginContext | None = None) -> None:
        self.name = name
        self.params = params if params is not None else self.Params()
        self.state_key = f"{self.type_name}/{name}"
        self.cached_tokens_key = f"{name}{CACHED_TOKENS_SUFFIX}"
        # endpoint key -> LRU of block hashes sent to it (values unused; OrderedDict gives O(1)
        # move-to-end and pop-oldest).
        self._lru: dict[str, OrderedDict[int, None]] = {}
        # First block hash of a recorded prompt -> the endpoints whose LRU holds it. Only
        # first blocks, so it stays small (a few system prompts, or one entry per
        # conversation). A match starts here: an endpoint not in it holds nothing of the
        # prompt, and one lookup in a small set replaces a lookup in each endpoint's LRU,
        # tables of up to num_gpu_blocks entries that miss the CPU cache.
        self._first_holders: dict[int, set[str]] = {}
        self._datastore = ctx.datastore if ctx is not None else None
        # With several EPP worker processes, each tells the others what it sent where.
        self._peers = ctx.services.get(PEER_BUS_KEY) if ctx is not None else None
        self._peer_topic = f"prefix/{name}"
        if ctx is not None:
            ctx.datastore.add_listener(self._on_endpoint_event)
        if self._peers is not None:
            self._peers.subscribe(self._peer_topic, self._on_peer_record)

    # --- scoring ----------------------------------------------------------------------------
    def score(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> list[float]:
        cycle = self.cycle_state(state, request, endpoints)
        blocks_list = self._blocks_of(cycle, endpoints)
        total = len(cycle.hashes)
        if total == 0:
            return [0.0] * len(endpoints)
        scores = [b / total for b in blocks_list] if any(blocks_list) else [0.0] * len(blocks_list)
        params = self.params
        if params.cache_threshold > 0.0:
            floor = params.cache_threshold
            scores = [0.0 if s < floor else s for s in scores]
        if params.balance_abs_threshold > 0 and max(scores) > 0.0:
            scores = self._let_go_of_busy(scores, cycle_request_load(state, endpoints))
        return scores

    def produce_prefix_matches(self, state: CycleState, request: LLMRequest,
                               endpoints: Sequence[Endpoint]) -> None:
        """The cycle's matches for `endpoints`, without scores (PrefixMatchProducer): the
        latency runtime asks them before the filters run; score() reads them afterwards.
        Those matched already in the cycle (an earlier profile) are kept."""
        self._blocks_of(self.cycle_state(state, request, endpoints), endpoints)

    def _blocks_of(self, cycle: PrefixCacheCycleState, endpoints: Sequence[Endpoint]) -> list[int]:
        """Each endpoint's matched blocks in this cycle: all matched in one pass the first time
        (the usual case); afterwards (a second profile, or the latency runtime asked first)
        those known are read and the others matched now."""
        matched = cycle.matched_blocks
        if not matched:
            return self._match(cycle, endpoints)
        get = matched.get
        return [b if (b := get(ep.key)) is not None else self._match_one(cycle, ep.key) for ep in endpoints]

    def _match(self, cycle: PrefixCacheCycleState, endpoints: Sequence[Endpoint]) -> list[int]:
        """Each endpoint's matched blocks, recorded in `cycle` (blocks and cached tokens): one
        pass (_match_lengths), and the two per-endpoint dicts filled in C from the keys."""
        keys = [ep.key for ep in endpoints]
        hashes = cycle.hashes
        blocks_list = self._match_lengths(keys, hashes) if hashes else [0] * len(keys)
        tokens_per_block = cycle.tokens_per_block
        cycle.matched_blocks.update(zip(keys, blocks_list, strict=True))
        cycle.cached_tokens.update(zip(keys, [b * tokens_per_block for b in blocks_list], strict=True))
        return blocks_list

    def _match_lengths(self, keys: Sequence[str], hashes: Sequence[int]) -> list[int]:
        """match_length of each of `keys`, in one pass. Only the endpoints holding the first
        block are searched (`_first_holders`). A popular prefix (a system prompt) is held by
        most endpoints, most of them to the same block: each is first tried at the length
        the last searched one had, two lookups that settle it when it matches, before the
        whole prompt and the binary search. Once the overhead benchmark's system prompts were
        held by about half of 64 pods, the per-endpoint search of every holder was what a
        decision's cost grew by most (docs/latency-routing.md, "Cost per decision")."""
        first, last, n = hashes[0], hashes[-1], len(hashes)
        holders = self._first_holders.get(first)
        out = [0] * len(keys)
        if not holders:
            return out
        lru_get = self._lru.get
        hint = 0  # the last searched length, in [1, n - 1]; 0: none yet
        held = missing = first  # hashes[hint - 1] and hashes[hint]
        for i, key in enumerate(keys):
            if key not in holders or (lru := lru_get(key)) is None:
                continue
            if hint and held in lru and missing not in lru:
                out[i] = hint
            elif last in lru:
                out[i] = n
            else:
                out[i] = hint = bisect_held_prefix(lru, hashes)
                held, missing = hashes[hint - 1], hashes[hint]
        return out

    def _match_one(self, cycle: PrefixCacheCycleState, key: str) -> int:
        blocks = cycle.matched_blocks[key] = self.match_length(key, cycle.hashes)
        cycle.cached_tokens[key] = blocks * cycle.tokens_per_block
        return blocks

    def _let_go_of_busy(self, scores: list[float], loads: list[int]) -> list[float]:
        least = min(loads)
        gap = self.params.balance_abs_threshold
        ratio = self.params.balance_rel_threshold
        return [0.0 if s > 0.0 and load - least > gap and load > ratio * least else s
                for s, load in zip(scores, loads, strict=True)]

    def cycle_state(
        self, state: CycleState, request: LLMRequest, endpoints: Sequence[Endpoint]
    ) -> PrefixCacheCycleState:
        """The hashes of this request, computed on first use in the cycle."""
        block_size = self._block_size(endpoints)
        cycle: PrefixCacheCycleState | None = state.get(self.state_key)
        if cycle is None or cycle.block_size != block_size:
            salt = request.body.get("cache_salt") if request.body else None
            seed = request.target_model if not isinstance(salt, str) else f"{request.target_model}\0{salt}"
            hashes = prefix_block_hashes(
                request.prompt_text(), seed, block_size, self.params.max_prefix_blocks_to_match
            )
            cycle = PrefixCacheCycleState(
                hashes, block_size, max(1, block_size // AVERAGE_CHARACTERS_PER_TOKEN)
            )
            state[self.state_key] = cycle
            state[self.cached_tokens_key] = cycle.cached_tokens
        return cycle

    def match_length(self, endpoint_key: str, hashes: Sequence[int]) -> int:
        """Number of leading blocks of `hashes` remembered for the endpoint."""
        lru = self._lru.get(endpoint_key)
        return held_prefix_length(lru, hashes) if lru else 0

    def _block_size(self, endpoints: Sequence[Endpoint]) -> int:
        if self.params.auto_tune and endpoints:
            tokens = endpoints[0].metrics.block_size
            if tokens > 0:
                return tokens * AVERAGE_CHARACTERS_PER_TOKEN
        return self.params.block_size

    # --- learning ---------------------------------------------------------------------------
    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        """Remember the prompt's blocks on the first target of every profile result: with
        P/D both the prefill and the decode endpoint end up holding the prefix's KV blocks."""
        cycle: PrefixCacheCycleState | None = state.get(self.state_key)
        if cycle is None or not cycle.hashes:
            return
        for profile_result in result.profile_results.values():
            if profile_result is not None and profile_result.targets:
                target = profile_result.targets[0]
                self.record(target, cycle.hashes)
                if self._peers is not None:
                    self._peers.publish(self._peer_topic, (target.key, cycle.hashes))

    def _on_peer_record(self, worker: int, payload: tuple[str, list[int]]) -> None:
        key, hashes = payload
        endpoint = self._datastore.get(key) if self._datastore is not None else None
        if endpoint is not None:
            self.record(endpoint, hashes)

    def record(self, endpoint: Endpoint, hashes: Sequence[int]) -> None:
        if not hashes:
            return
        key = endpoint.key
        lru = self._lru.get(key)
        if lru is None:
            lru = self._lru[key] = OrderedDict()
        move_to_end = lru.move_to_end
        for h in reversed(hashes):  # tail first: see module docstring
            if h in lru:
                move_to_end(h)
            else:
                lru[h] = None
        first_holders = self._first_holders
        holders = first_holders.get(hashes[0])
        if holders is None:
            first_holders[hashes[0]] = {key}
        else:
            holders.add(key)
        capacity = self.params.lru_capacity_per_server
        if self.params.auto_tune and endpoint.metrics.num_gpu_blocks > 0:
            capacity = endpoint.metrics.num_gpu_blocks
        while len(lru) > capacity:
            evicted, _ = lru.popitem(last=False)
            if (holders := first_holders.get(evicted)) is not None:
                self._forget_holder(evicted, holders, key)

    def cached_blocks(self, endpoint_key: str) -> int:
        """How many block hashes are remembered for the endpoint (for tests and debugging)."""
        lru = self._lru.get(endpoint_key)
        return len(lru) if lru is not None else 0

    def _on_endpoint_event(self, event: str, endpoint: Endpoint) -> None:
        if event == "removed":
            lru = self._lru.pop(endpoint.key, None)
            if lru:
                first_holders = self._first_holders
                for h in lru:
                    if (holders := first_holders.get(h)) is not None:
                        self._forget_holder(h, holders, endpoint.key)

    def _forget_holder(self, first: int, holders: set[str], key: str) -> None:
        holders.discard(key)
        if not holders:
            del self._first_holders[first]
