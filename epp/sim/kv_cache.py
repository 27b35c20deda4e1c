"""Paged KV cache with prefix caching, modelled on vLLM v1's BlockPool.

- `num_gpu_blocks` blocks of `block_size` token slots, each with a reference count.
- A full block of a request gets its chained block hash and enters the hash -> block map
  (emitting BlockStored); it stays reusable after the request ends.
- Free blocks (ref_cnt 0) sit in an LRU queue, cached or not. Allocation pops the head;
  popping a cached block evicts it (emitting BlockRemoved). Requests free their blocks in
  reverse order so the tail of a chain is evicted before its head, as vLLM does.
- Usage = 1 - free/total, where free includes evictable cached blocks (vLLM's definition).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from epp.prefixcache.block_hash import BlockHash, wire_hash
from epp.prefixcache.events import MEDIUM_GPU, AllBlocksCleared, BlockRemoved, BlockStored, KVEvent


@dataclass(slots=True, eq=False)
class KVBlock:
    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None


class PrefixCachingBlockPool:
    """Block allocator + prefix cache; collects KV events for the publisher."""

    def __init__(
        self, num_blocks: int, block_size: int, enable_caching: bool = True, int_hashes: bool = True
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.int_hashes = int_hashes
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        # block_id -> block, in eviction order (head evicted first)
        self._free: OrderedDict[int, KVBlock] = OrderedDict((b.block_id, b) for b in self.blocks)
        self._cached: dict[BlockHash, KVBlock] = {}
        self.pending_events: list[KVEvent] = []
        self.evictions = 0

    # ------------------------------------------------------------------ queries

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def lookup_prefix(self, block_hashes: Sequence[BlockHash]) -> list[KVBlock]:
        """Cached blocks for the longest prefix of `block_hashes` (stops at the first miss)."""
        if not self.enable_caching:
            return []
        hits: list[KVBlock] = []
        cached = self._cached
        for h in block_hashes:
            block = cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def is_cached(self, block_hash: BlockHash) -> bool:
        return block_hash in self._cached

    # ------------------------------------------------------------------ mutations

    def touch(self, blocks: Sequence[KVBlock]) -> None:
        """Take a reference on cache-hit blocks (removing free ones from the LRU queue)."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def allocate(self, n: int) -> list[KVBlock] | None:
        """n fresh blocks, evicting cached ones as needed; None if fewer than n are free."""
        if n > len(self._free):
            return None
        out: list[KVBlock] = []
        removed: list[BlockHash] = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.block_hash is not None:
                if self._cached.get(block.block_hash) is block:
                    del self._cached[block.block_hash]
                    removed.append(block.block_hash)
                block.block_hash = None
            block.ref_cnt = 1
            out.append(block)
        if removed:
            self.evictions += len(removed)
            self.pending_events.append(
                BlockRemoved(block_hashes=[wire_hash(h, self.int_hashes) for h in removed], medium=MEDIUM_GPU,
                             group_idx=0)
            )
        return out

    def free(self, blocks: Sequence[KVBlock]) -> None:
        """Drop one reference from each block; blocks reaching 0 join the LRU tail (reversed)."""
        for block in reversed(blocks):
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self._free[block.block_id] = block

    def cache_full_blocks(
        self,
        blocks: Sequence[KVBlock],
        block_hashes: Sequence[BlockHash],
        token_ids: Sequence[int],
        parent_hash: BlockHash | None,
        lora_name: str | None,
        cache_salt: str | None = None,
    ) -> None:
        """Register newly full, consecutive blocks under their hashes; one BlockStored per run.

        `token_ids` are the tokens of exactly these blocks; `parent_hash` is the hash of the
        block before the first one (None at the start of a sequence). `lora_name` and
        `cache_salt` only shape the events' per-block `extra_keys`, as in vLLM.
        """
        if not self.enable_caching or not blocks:
            return
        size = self.block_size
        run_start = -1
        run_parent: BlockHash | None = None
        prev = parent_hash
        for i, (block, block_hash) in enumerate(zip(blocks, block_hashes, strict=True)):
            # A block already hashed, or content another block already caches (computed twice
            # concurrently: vLLM keeps the first), ends the current run.
            fresh = block.block_hash is None and block_hash not in self._cached
            if fresh:
                block.block_hash = block_hash
                self._cached[block_hash] = block
                if run_start < 0:
                    run_start = i
                    run_parent = prev
            elif run_start >= 0:
                self._emit_stored(
                    block_hashes[run_start:i], run_parent, token_ids[run_start * size : i * size], lora_name,
                    cache_salt,
                )
                run_start = -1
            prev = block_hash
        if run_start >= 0:
            end = len(blocks)
            self._emit_stored(
                block_hashes[run_start:end], run_parent, token_ids[run_start * size : end * size], lora_name,
                cache_salt,
            )

    def _emit_stored(
        self,
        hashes: Sequence[BlockHash],
        parent: BlockHash | None,
        token_ids: Sequence[int],
        lora_name: str | None,
        cache_salt: str | None = None,
    ) -> None:
        convert = self.int_hashes
        # vLLM's generate_block_hash_extra_keys per block: LoRA name, then the cache salt on
        # the sequence's first block (parent None) only; None when a block has neither.
        lora: tuple[str, ...] = (lora_name,) if lora_name else ()
        extra_keys: list[tuple[str, ...] | None] = [lora or None] * len(hashes)
        if parent is None and cache_salt and hashes:
            extra_keys[0] = (*lora, cache_salt)
        self.pending_events.append(
            BlockStored(
                block_hashes=[wire_hash(h, convert) for h in hashes],
                parent_block_hash=None if parent is None else wire_hash(parent, convert),
                token_ids=list(token_ids),
                block_size=self.block_size,
                lora_id=None,
                medium=MEDIUM_GPU,
                lora_name=lora_name,
                extra_keys=list(extra_keys),
                # One full-attention KV-cache group, as vLLM reports for a standard model.
                group_idx=0,
                kv_cache_spec_kind="full_attention",
            )
        )

    def reset(self) -> bool:
        """Drop every cached hash (vLLM's reset_prefix_cache); refused while blocks are in use."""
        if len(self._free) != self.num_blocks:
            return False
        for block in self.blocks:
            block.block_hash = None
        self._cached.clear()
        self.pending_events.append(AllBlocksCleared())
        return True

    def drain_events(self) -> list[KVEvent]:
        events, self.pending_events = self.pending_events, []
        return events
