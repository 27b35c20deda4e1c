"""KV-block index: which pods hold which KV-cache blocks, keyed by vLLM block hash.

The write side is fed by the KV-event subscribers (BlockStored / BlockRemoved /
AllBlocksCleared); the read side is the precise prefix-cache scorer, which asks for the
longest run of leading blocks of a request each pod holds. Because vLLM chains block hashes
(each hash covers its parent), a pod holding block i of a request necessarily computed
blocks 0..i-1 of the same prefix, so the longest *leading* run is what matters and the
lookup stops at the first block no candidate pod holds.

Two backends share one interface (`KVBlockIndex`):
- `InMemoryKVBlockIndex`: LRU-bounded dict, the default (one index per EPP process).
- `RedisKVBlockIndex`: shared by several EPP replicas; bounded by Redis' own maxmemory
  policy (configure `allkeys-lru`) plus an optional per-block TTL.

Reads are synchronous (scorers run synchronously inside the scheduling cycle); writes are
async so that the Redis backend never blocks the event loop on a subscriber's batch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

# A block hash as carried in KV events: int (vLLM >= 0.10 default, or the old builtin hash)
# or bytes (sha256 digests when integer block hashes are disabled).
BlockKey = int | bytes

DEFAULT_MEDIUM = "GPU"


@dataclass(slots=True)
class IndexStats:
    """Counters of one index instance (exported as metrics by the manager)."""

    blocks: int = 0
    admissions: int = 0
    evictions: int = 0
    lookups: int = 0
    lookup_hits: int = 0  # lookups where at least one pod matched at least one block


@runtime_checkable
class KVBlockIndex(Protocol):
    """Block hash -> pods (with the medium/tier each pod holds it on)."""

    stats: IndexStats

    def longest_prefix(
        self, hashes: Sequence[BlockKey], pods: Collection[str] | None = None
    ) -> dict[str, int]:
        """Pods holding a leading run of `hashes`, mapped to the run length in blocks.

        Pods with no match are absent. `pods` restricts the answer to those pod keys (the
        scheduling candidates), which also lets the walk stop early.
        """
        ...

    def held(self, pod: str, hashes: Sequence[BlockKey]) -> list[bool]:
        """For each hash, whether `pod` holds it (anywhere in the sequence, not only a leading
        run): hybrid models' sliding-window and Mamba groups hold the END of a prefix."""
        ...

    def pods_with_blocks(self) -> set[str]:
        """Pods that currently have at least one block indexed."""
        ...

    async def add(self, pod: str, hashes: Iterable[BlockKey], medium: str | None = None) -> None: ...

    async def remove(self, pod: str, hashes: Iterable[BlockKey], medium: str | None = None) -> None: ...

    async def clear_pod(self, pod: str) -> None: ...

    async def close(self) -> None: ...


class InMemoryKVBlockIndex:
    """LRU-bounded in-process index.

    `max_blocks` bounds the number of distinct block hashes (least recently stored or looked
    up goes first); `max_pods_per_block` bounds the pod entries of one block (the oldest
    entry goes first), as llm-d's inMemoryConfig.size / podCacheSize do. A reverse map
    pod -> hashes makes AllBlocksCleared and pod removal O(blocks of that pod).
    """

    def __init__(self, max_blocks: int = 1_000_000, max_pods_per_block: int = 16) -> None:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        if max_pods_per_block < 1:
            raise ValueError(f"max_pods_per_block must be >= 1, got {max_pods_per_block}")
        self.max_blocks = max_blocks
        self.max_pods_per_block = max_pods_per_block
        # hash -> {pod: set of media}; dict order of the inner dict is pod insertion order.
        self._blocks: OrderedDict[BlockKey, dict[str, set[str]]] = OrderedDict()
        self._by_pod: dict[str, set[BlockKey]] = {}
        self.stats = IndexStats()

    def __len__(self) -> int:
        return len(self._blocks)

    # --- reads ----------------------------------------------------------------------------
    def longest_prefix(
        self, hashes: Sequence[BlockKey], pods: Collection[str] | None = None
    ) -> dict[str, int]:
        self.stats.lookups += 1
        blocks = self._blocks
        result: dict[str, int] = {}
        if not hashes:
            return result
        first = blocks.get(hashes[0])
        if first is None:
            return result
        active = first.keys() & pods if pods is not None else set(first)
        matched = 0
        # Set operations per block (in C); a pod's count is written only when it drops out.
        for h in hashes:
            entry = blocks.get(h)
            if entry is None:
                break
            still = active & entry.keys()
            if len(still) != len(active):
                for pod in active - still:
                    result[pod] = matched
                active = still
                if not active:
                    break
            # Keep hot prefixes (system prompts) from being evicted by one-off suffixes.
            blocks.move_to_end(h)
            matched += 1
        for pod in active:
            result[pod] = matched
        for pod in [p for p, n in result.items() if n == 0]:
            del result[pod]
        if result:
            self.stats.lookup_hits += 1
        return result

    def held(self, pod: str, hashes: Sequence[BlockKey]) -> list[bool]:
        mine = self._by_pod.get(pod)
        if not mine:
            return [False] * len(hashes)
        return [h in mine for h in hashes]

    def pods_with_blocks(self) -> set[str]:
        return {pod for pod, hashes in self._by_pod.items() if hashes}

    def blocks_of(self, pod: str) -> int:
        return len(self._by_pod.get(pod, ()))

    def media_of(self, h: BlockKey, pod: str) -> set[str]:
        entry = self._blocks.get(h)
        return set(entry.get(pod, ())) if entry is not None else set()

    # --- writes ---------------------------------------------------------------------------
    async def add(self, pod: str, hashes: Iterable[BlockKey], medium: str | None = None) -> None:
        self.add_now(pod, hashes, medium)

    async def remove(self, pod: str, hashes: Iterable[BlockKey], medium: str | None = None) -> None:
        self.remove_now(pod, hashes, medium)

    async def clear_pod(self, pod: str) -> None:
        self.clear_pod_now(pod)

    async def close(self) -> None:
        return None

    def add_now(self, pod: str, hashes: Iterable[BlockKey], medium: str | None = None) -> None:
        """Synchronous add (the in-memory index never waits; also used for speculation)."""
        tier = medium or DEFAULT_MEDIUM
        blocks = self._blocks
        pod_hashes = self._by_pod.setdefault(pod, set())
        for h in hashes:
            entry = blocks.get(h)
            if entry is None:
                entry = {}
                blocks[h] = entry
                self.stats.admissions += 1
            else:
                blocks.move_to_end(h)
            media = entry.get(pod)
            if media is None:
                if len(entry) >= self.max_pods_per_block:
                    oldest = next(iter(entry))
                    del entry[oldest]
                    self._forget(oldest, h)
                entry[pod] = {tier}
                pod_hashes.add(h)
            else:
                media.add(tier)
        while len(blocks) > self.max_blocks:
            h, entry = blocks.popitem(last=False)
            self.stats.evictions += 1
            for holder in entry:
                self._forget(holder, h)
        self.stats.blocks = len(blocks)

    def remove_now(self, pod: str, hashes: Iterable[BlockKey], medium: str | None = None) -> None:
        blocks = self._blocks
        for h in hashes:
            entry = blocks.get(h)
            if entry is None:
                continue
            media = entry.get(pod)
            if media is None:
                continue
            if medium is not None:
                media.discard(medium)
                if media:
                    continue  # still held on another tier
            del entry[pod]
            self._forget(pod, h)
            if not entry:
                del blocks[h]
        self.stats.blocks = len(blocks)

    def clear_pod_now(self, pod: str) -> None:
        hashes = self._by_pod.pop(pod, None)
        if not hashes:
            return
        blocks = self._blocks
        for h in hashes:
            entry = blocks.get(h)
            if entry is None:
                continue
            entry.pop(pod, None)
            if not entry:
                del blocks[h]
        self.stats.blocks = len(blocks)

    def _forget(self, pod: str, h: BlockKey) -> None:
        pod_hashes = self._by_pod.get(pod)
        if pod_hashes is not None:
            pod_hashes.discard(h)
            if not pod_hashes:
                del self._by_pod[pod]


# Removes a pod's entries from block hashes server-side (one round trip, atomic per call).
# KEYS[1] = the pod's set of hashes, KEYS[2..] = block keys; ARGV[1] = "<pod>|",
# ARGV[2] = medium ("" = every medium), ARGV[3] = length of the block-key prefix.
# A hash leaves the pod's set once no tier of it remains.
_REMOVE_LUA = """
local prefix = ARGV[1]
local medium = ARGV[2]
local plen = #prefix
local block_prefix_len = tonumber(ARGV[3])
for i = 2, #KEYS do
  local k = KEYS[i]
  local remaining = false
  for _, f in ipairs(redis.call('HKEYS', k)) do
    if string.sub(f, 1, plen) == prefix then
      if medium == '' or string.sub(f, plen + 1) == medium then
        redis.call('HDEL', k, f)
      else
        remaining = true
      end
    end
  end
  if not remaining then
    redis.call('SREM', KEYS[1], string.sub(k, block_prefix_len + 1))
  end
end
return 0
"""


def _key_text(h: BlockKey) -> str:
    return h.hex() if isinstance(h, bytes) else str(h)


class RedisKVBlockIndex:
    """Index kept in Redis so that several EPP replicas share one view.

    Layout (all under `key_prefix`): `<prefix>b:<hash>` is a hash whose fields are
    "<pod>|<medium>"; `<prefix>p:<pod>` is a set of the pod's block hashes (for clearing).
    A lookup is one pipelined round trip of HKEYS over the request's blocks. Bound memory
    with Redis `maxmemory` + `maxmemory-policy allkeys-lru` and/or `block_ttl_seconds`.

    Reads use a synchronous client (scorers are synchronous; one loopback round trip is
    ~0.1 ms); writes use redis.asyncio so subscribers never block the event loop.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379",
        key_prefix: str = "epp:kv:",
        block_ttl_seconds: int = 0,
        max_lookup_blocks: int = 4096,
    ) -> None:
        try:
            import redis
            import redis.asyncio as aredis
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "the Redis KV-block index needs the 'redis' package: pip install 'llm-epp[redis]'"
            ) from e
        self.url = url
        self.key_prefix = key_prefix
        self.block_ttl_seconds = block_ttl_seconds
        self.max_lookup_blocks = max_lookup_blocks
        self._sync: Any = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._async: Any = aredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._bprefix_len = len(f"{key_prefix}b:")
        self._remove_script: Any = self._async.register_script(_REMOVE_LUA)
        self.stats = IndexStats()

    def _bkey(self, h: BlockKey) -> str:
        return f"{self.key_prefix}b:{_key_text(h)}"

    def _pkey(self, pod: str) -> str:
        return f"{self.key_prefix}p:{pod}"

    # --- reads ----------------------------------------------------------------------------
    def longest_prefix(
        self, hashes: Sequence[BlockKey], pods: Collection[str] | None = None
    ) -> dict[str, int]:
        self.stats.lookups += 1
        if not hashes:
            return {}
        wanted = hashes[: self.max_lookup_blocks]
        pipe = self._sync.pipeline(transaction=False)
        for h in wanted:
            pipe.hkeys(self._bkey(h))
        rows: list[list[bytes]] = pipe.execute()
        result: dict[str, int] = {}
        active: set[str] | None = set(pods) if pods is not None else None
        for i, fields in enumerate(rows):
            holders = {f.decode().rpartition("|")[0] for f in fields}
            if active is not None:
                holders &= active
            if not holders:
                break
            for pod in holders:
                result[pod] = i + 1
            active = holders
        if result:
            self.stats.lookup_hits += 1
        return result

    def held(self, pod: str, hashes: Sequence[BlockKey]) -> list[bool]:
        if not hashes:
            return []
        wanted = hashes[: self.max_lookup_blocks]
        # One round trip on the pod's set of hashes (SMISMEMBER, Redis >= 6.2).
        rows: list[Any] = self._sync.smismember(self._pkey(pod), [_key_text(h) for h in wanted])
        return [bool(r) for r in rows] + [False] * (len(hashes) - len(wanted))

    def pods_with_blocks(self) -> set[str]:
        prefix = self._pkey("")
        return {k.decode()[len(prefix) :] for k in self._sync.scan_iter(match=f"{prefix}*", count=1000)}

    # --- writes ---------------------------------------------------------------------------
    async def add(self, pod: str, hashes: Iterable[BlockKey], medium: str | None = None) -> None:
        field = f"{pod}|{medium or DEFAULT_MEDIUM}"
        keys = [_key_text(h) for h in hashes]
        if not keys:
            return
        pipe = self._async.pipeline(transaction=False)
        for k in keys:
            bkey = f"{self.key_prefix}b:{k}"
            pipe.hset(bkey, field, 1)
            if self.block_ttl_seconds > 0:
                pipe.expire(bkey, self.block_ttl_seconds)
        pipe.sadd(self._pkey(pod), *keys)
        await pipe.execute()
        self.stats.admissions += len(keys)

    async def remove(self, pod: str, hashes: Iterable[BlockKey], medium: str | None = None) -> None:
        keys = [self._bkey(h) for h in hashes]
        if keys:
            await self._remove_script(
                keys=[self._pkey(pod), *keys], args=[f"{pod}|", medium or "", self._bprefix_len]
            )

    async def clear_pod(self, pod: str) -> None:
        pkey = self._pkey(pod)
        members: list[bytes] = list(await self._async.smembers(pkey))
        # Chunked so that one huge pod never runs one long blocking script.
        for start in range(0, len(members), 1000):
            chunk = [f"{self.key_prefix}b:{m.decode()}" for m in members[start : start + 1000]]
            await self._remove_script(keys=[pkey, *chunk], args=[f"{pod}|", "", self._bprefix_len])
        await self._async.delete(pkey)

    async def close(self) -> None:
        self._sync.close()
        await self._async.aclose()
