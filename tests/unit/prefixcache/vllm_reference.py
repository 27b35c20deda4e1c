"""Independent references for vLLM's prefix-cache hashing and KV-event wire format.

Nothing here imports the project's code. The hashing is a straight reimplementation of
vllm/utils/hashing.py (sha256, sha256_cbor, xxhash, xxhash_cbor) and of
vllm/v1/core/kv_cache_utils.py (init_none_hash / resolve_none_hash_seed, hash_block_tokens,
get_request_block_hasher, generate_block_hash_extra_keys) using the libraries vLLM uses
(hashlib, pickle, cbor2, xxhash). The event structs are declared exactly as
vllm/distributed/kv_events.py declares them (msgspec.Struct with omit_defaults=True, gc=False,
tag=True on the events; array_like=True on both before vLLM #42892), so msgspec itself
produces the bytes a vLLM pod would send, default omission included.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import cbor2
import msgspec
import xxhash

# ----------------------------------------------------------------------------- hashing


def sha256(obj: Any) -> bytes:
    return hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def sha256_cbor(obj: Any) -> bytes:
    return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()


def xxhash_pickle(obj: Any) -> bytes:
    return xxhash.xxh3_128_digest(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def xxhash_cbor(obj: Any) -> bytes:
    return xxhash.xxh3_128_digest(cbor2.dumps(obj, canonical=True))


HASH_FUNCTIONS: dict[str, Callable[[Any], bytes]] = {
    "sha256": sha256, "sha256_cbor": sha256_cbor, "xxhash": xxhash_pickle, "xxhash_cbor": xxhash_cbor,
}
NON_CRYPTO = {"xxhash", "xxhash_cbor"}
DEFAULT_NONE_HASH_SEED = "vllm-none-hash"


def vllm_none_hash_seed(algo: str) -> str | None:
    """resolve_none_hash_seed: PYTHONHASHSEED, else the fixed seed for cryptographic
    algorithms; None stands for the random per-process seed of xxhash."""
    env = os.getenv("PYTHONHASHSEED")
    if env is not None:
        return env
    return None if algo in NON_CRYPTO else DEFAULT_NONE_HASH_SEED


def request_block_hashes(algo: str, seed: str, block_size: int, tokens: Sequence[int],
                         lora_name: str | None = None, cache_salt: str | None = None) -> list[bytes]:
    """get_request_block_hasher for a text-only request (no multimodal, no prompt embeds)."""
    fn = HASH_FUNCTIONS[algo]
    none_hash = fn(seed)
    out: list[bytes] = []
    prev: bytes | None = None
    start = 0
    while start + block_size <= len(tokens):
        keys: list[Any] = ([lora_name] if lora_name else []) + ([cache_salt] if start == 0 and cache_salt else [])
        extra = tuple(keys) if keys else None
        parent = prev if prev else none_hash
        prev = fn((parent, tuple(tokens[start:start + block_size]), extra))
        out.append(prev)
        start += block_size
    return out


def maybe_convert_block_hash(digest: bytes, use_int: bool = True) -> int | bytes:
    return int.from_bytes(digest, byteorder="big") & ((1 << 64) - 1) if use_int else digest


# ----------------------------------------------------------------------------- events


def vllm_event_structs(*, array_like_events: bool, array_like_batch: bool) -> SimpleNamespace:
    """vLLM's KV-event structs. array_like on both: vLLM before #42892; events as maps in an
    array batch: #42892 (e.g. v0.26); neither: later vLLM (EventBatch lost array_like too)."""

    class EventBatch(msgspec.Struct, array_like=array_like_batch, omit_defaults=True, gc=False):
        ts: float
        events: list[Any]
        data_parallel_rank: int | None = None

    class KVCacheEvent(msgspec.Struct, array_like=array_like_events, omit_defaults=True, gc=False, tag=True):
        """Base class for all KV cache-related events"""

    class BlockStored(KVCacheEvent):
        block_hashes: list[bytes | int]
        parent_block_hash: bytes | int | None
        token_ids: list[int]
        block_size: int
        lora_id: int | None
        medium: str | None
        lora_name: str | None
        extra_keys: list[tuple[Any, ...] | None] | None = None
        group_idx: int | None = None
        kv_cache_spec_kind: str | None = None
        kv_cache_spec_sliding_window: int | None = None

    class BlockRemoved(KVCacheEvent):
        block_hashes: list[bytes | int]
        medium: str | None
        group_idx: int | None = None

    class AllBlocksCleared(KVCacheEvent):
        pass

    class KVEventBatch(EventBatch):
        events: list[BlockStored | BlockRemoved | AllBlocksCleared]  # type: ignore[assignment]

    return SimpleNamespace(BlockStored=BlockStored, BlockRemoved=BlockRemoved,
                           AllBlocksCleared=AllBlocksCleared, KVEventBatch=KVEventBatch)


def vllm_0_9_structs() -> SimpleNamespace:
    """The first released layout (vLLM #16750): int hashes, no medium, no dp rank."""

    class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
        ts: float
        events: list[Any]

    class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
        """Base class for all KV cache-related events"""

    class BlockStored(KVCacheEvent):
        block_hashes: list[int]
        parent_block_hash: int | None
        token_ids: list[int]
        block_size: int
        lora_id: int | None

    class BlockRemoved(KVCacheEvent):
        block_hashes: list[int]

    class AllBlocksCleared(KVCacheEvent):
        pass

    class KVEventBatch(EventBatch):
        events: list[BlockStored | BlockRemoved | AllBlocksCleared]  # type: ignore[assignment]

    return SimpleNamespace(BlockStored=BlockStored, BlockRemoved=BlockRemoved,
                           AllBlocksCleared=AllBlocksCleared, KVEventBatch=KVEventBatch)


SHAPES = {
    "array": dict(array_like_events=True, array_like_batch=True),
    "map": dict(array_like_events=False, array_like_batch=True),
    "map-batch": dict(array_like_events=False, array_like_batch=False),
}
