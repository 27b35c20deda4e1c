"""vLLM's chained prefix-cache block hashes (vllm/v1/core/kv_cache_utils.py).

For every FULL block of `block_size` tokens vLLM computes

    hash_i = H((parent, tuple(block_token_ids), extra_keys))

where `parent` is hash_{i-1} (raw digest bytes) or NONE_HASH for the first block, and `H`
is `--prefix-caching-hash-algo`:

- `sha256` (vLLM's default): sha256(pickle.dumps(obj, protocol=HIGHEST_PROTOCOL)).digest()
- `sha256_cbor`: sha256(cbor2.dumps(obj, canonical=True)).digest()  (language independent)
- `xxhash` / `xxhash_cbor`: xxh3_128 digest of the pickle / CBOR bytes (needs `xxhash`).

NONE_HASH = H(seed) (vLLM `init_none_hash` / `resolve_none_hash_seed`): the seed is
$PYTHONHASHSEED when set; otherwise current vLLM uses the fixed string "vllm-none-hash" for the
cryptographic algorithms (sha256, sha256_cbor) and fresh random bytes per process for xxhash /
xxhash_cbor (a predictable seed would let an attacker precompute colliding blocks). So an
xxhash pod is only reproducible with PYTHONHASHSEED set, and the EPP refuses xxhash without
an explicit seed (`resolve_seed`). vLLM releases before that change seeded NONE_HASH randomly
for every algorithm unless PYTHONHASHSEED was set: such pods need PYTHONHASHSEED too.

`extra_keys` is a tuple (LoRA name first, then multimodal keys, then cache_salt on the first
block only) or None. In KV events vLLM publishes hashes as ExternalBlockHash: by default
(VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1) the low 64 bits of the big-endian digest as an int,
otherwise the raw digest bytes; `wire_hash` does that conversion. The index keys every hash
by `fold_hash`: the low 64 bits, the int form whichever form a pod publishes (llm-d's
kv-cache manager folds bytes hashes the same way: the last 8 bytes, big-endian), so pods with
and without VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES match the same request hashes.

The CBOR encoder below covers exactly the value shapes vLLM hashes (str, bytes, int, None,
bool, and tuples/lists of them) in RFC 8949 canonical form (shortest integer heads,
definite lengths), which is what cbor2's `canonical=True` emits for these types.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from collections.abc import Callable, Container, Sequence
from typing import Any

BlockHash = bytes
ExternalBlockHash = int | bytes
HashFunction = Callable[[Any], bytes]

DEFAULT_HASH_ALGO = "sha256"
DEFAULT_BLOCK_SIZE = 16
DEFAULT_NONE_HASH_SEED = "vllm-none-hash"
HASH_ALGOS = ("sha256", "sha256_cbor", "xxhash", "xxhash_cbor")
# vLLM's _NON_CRYPTO_HASH_FUNCTIONS: no fixed default seed, random per process.
NON_CRYPTO_HASH_ALGOS = frozenset({"xxhash", "xxhash_cbor"})

_UINT64_MASK = (1 << 64) - 1


# ---------------------------------------------------------------------------- CBOR encoding


def _cbor_head(major: int, value: int) -> bytes:
    mt = major << 5
    if value < 24:
        return bytes((mt | value,))
    if value < 0x100:
        return bytes((mt | 24, value))
    if value < 0x10000:
        return struct.pack(">BH", mt | 25, value)
    if value < 0x100000000:
        return struct.pack(">BI", mt | 26, value)
    if value <= _UINT64_MASK:
        return struct.pack(">BQ", mt | 27, value)
    raise ValueError(f"integer {value} does not fit a CBOR head (bignums are not supported)")


class _UIntEncodingCache(dict[int, bytes]):
    """Memoized CBOR encodings of non-negative ints: token ids repeat, so a dict lookup beats
    re-encoding on the hot path. Bounded by the vocabulary size in practice."""

    def __missing__(self, value: int) -> bytes:
        if type(value) is not int or value < 0:
            raise TypeError("not a non-negative int")
        encoded = _cbor_head(0, value)
        if len(self) < 1_000_000:
            self[value] = encoded
        return encoded


_UINT_CBOR = _UIntEncodingCache()


def _cbor_array(values: Sequence[Any]) -> bytes:
    head = _cbor_head(4, len(values))
    if values and type(values[0]) is int:
        # Fast path for token-id tuples; a negative or non-int member raises in __missing__
        # and falls back to the general encoder.
        try:
            return head + b"".join(map(_UINT_CBOR.__getitem__, values))
        except (TypeError, ValueError):
            pass
    return head + b"".join(cbor_encode(v) for v in values)


def cbor_encode(value: Any) -> bytes:
    """Canonical CBOR for None/bool/int/bytes/str/tuple/list (what vLLM block hashes contain)."""
    if value is None:
        return b"\xf6"
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if isinstance(value, int):
        return _UINT_CBOR[value] if value >= 0 else _cbor_head(1, -1 - value)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return _cbor_head(2, len(raw)) + raw
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _cbor_head(3, len(raw)) + raw
    if isinstance(value, tuple | list):
        return _cbor_array(value)
    raise TypeError(f"cannot CBOR-encode a {type(value).__name__} in a block hash")


# ---------------------------------------------------------------------------- hash functions


def _sha256_pickle(obj: Any) -> bytes:
    return hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def _sha256_cbor(obj: Any) -> bytes:
    return hashlib.sha256(cbor_encode(obj)).digest()


def _xxh3_128(data: bytes) -> bytes:
    try:
        import xxhash
    except ModuleNotFoundError as e:
        raise RuntimeError(
            "prefix-caching hash algo 'xxhash'/'xxhash_cbor' needs the optional 'xxhash' package "
            "(pip install xxhash); or use 'sha256' / 'sha256_cbor'"
        ) from e
    return bytes(xxhash.xxh3_128_digest(data))


def _xxhash_pickle(obj: Any) -> bytes:
    return _xxh3_128(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _xxhash_cbor(obj: Any) -> bytes:
    return _xxh3_128(cbor_encode(obj))


def get_hash_function(algo: str) -> HashFunction:
    """The vLLM hash function named by --prefix-caching-hash-algo."""
    table: dict[str, HashFunction] = {
        "sha256": _sha256_pickle,
        "sha256_cbor": _sha256_cbor,
        "xxhash": _xxhash_pickle,
        "xxhash_cbor": _xxhash_cbor,
    }
    try:
        return table[algo]
    except KeyError:
        raise ValueError(
            f"unknown prefix-caching hash algo {algo!r}; expected one of {', '.join(HASH_ALGOS)}"
        ) from None


class UnreproducibleSeedError(ValueError):
    """The pods' NONE_HASH seed cannot be known (xxhash without PYTHONHASHSEED)."""


def resolve_seed(seed: str | None, algo: str = DEFAULT_HASH_ALGO) -> str:
    """The NONE_HASH seed as vLLM resolves it: explicit seed, else $PYTHONHASHSEED, else the
    fixed "vllm-none-hash" for sha256 / sha256_cbor. For xxhash / xxhash_cbor vLLM draws a
    random seed per process, which nobody else can reproduce: that raises."""
    if seed is not None:
        return seed
    env = os.environ.get("PYTHONHASHSEED")
    if env is not None:
        return env
    if algo in NON_CRYPTO_HASH_ALGOS:
        raise UnreproducibleSeedError(
            f"hash algo {algo!r} needs an explicit seed: without PYTHONHASHSEED vLLM seeds it with "
            "random bytes per process, so no other process can compute the same block hashes; "
            "set PYTHONHASHSEED on the pods and the same value as the hash seed here"
        )
    return DEFAULT_NONE_HASH_SEED


def wire_hash(block_hash: BlockHash, as_int: bool = True) -> ExternalBlockHash:
    """The representation of a block hash in vLLM KV events (see module doc)."""
    if not as_int:
        return block_hash
    return int.from_bytes(block_hash, "big") & _UINT64_MASK


def process_seed(algo: str) -> str:
    """The seed a vLLM process itself ends up with (for the simulator): as `resolve_seed`,
    but xxhash without PYTHONHASHSEED gets fresh random bytes, as in vLLM."""
    try:
        return resolve_seed(None, algo)
    except UnreproducibleSeedError:
        return os.urandom(32).hex()


def fold_hash(value: ExternalBlockHash) -> int:
    """A published block hash as the index keys it: the low 64 bits as an unsigned int.

    Int hashes are already that (a negative int, as some msgpack decoders produce for
    uint64 > 2**63, is read as its two's complement); bytes hashes (raw digests, with
    VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0) give their last 8 bytes, big-endian, which is
    exactly the int vLLM would have published for the same digest."""
    if isinstance(value, int):
        return value & _UINT64_MASK
    return int.from_bytes(value[-8:], "big")


def lora_extra_keys(lora_name: str | None) -> tuple[Any, ...] | None:
    """vLLM's extra_keys for a (text-only) request: the LoRA adapter name, if any."""
    return (lora_name,) if lora_name else None


class BlockHasher:
    """Computes vLLM-identical chained block hashes for token sequences."""

    __slots__ = ("_digest", "algo", "block_size", "hash_fn", "none_hash", "seed")

    def __init__(
        self, algo: str = DEFAULT_HASH_ALGO, block_size: int = DEFAULT_BLOCK_SIZE, seed: str | None = None
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.algo = algo
        self.block_size = block_size
        self.hash_fn = get_hash_function(algo)
        self.seed = resolve_seed(seed, algo)
        self.none_hash: BlockHash = self.hash_fn(self.seed)
        # For the CBOR algorithms the 3-tuple is serialized inline (same bytes as
        # cbor_encode) to skip per-block dispatch: ~3x faster on long prompts.
        self._digest: Callable[[bytes], bytes] | None = None
        if algo == "sha256_cbor":
            self._digest = lambda data: hashlib.sha256(data).digest()
        elif algo == "xxhash_cbor":
            self._digest = _xxh3_128

    def hash_block(
        self,
        parent: BlockHash | None,
        block_token_ids: Sequence[int],
        extra_keys: tuple[Any, ...] | None = None,
    ) -> BlockHash:
        """hash_block_tokens(): one block given its parent hash (None for the first block)."""
        return self.hash_fn((parent or self.none_hash, tuple(block_token_ids), extra_keys))

    def hash_tokens(
        self,
        token_ids: Sequence[int],
        extra_keys: tuple[Any, ...] | None = None,
        parent: BlockHash | None = None,
        cache_salt: str | None = None,
    ) -> list[BlockHash]:
        """One chained hash per FULL block of `token_ids` (a trailing partial block is skipped).

        `extra_keys` applies to every block (e.g. `lora_extra_keys(name)`); `cache_salt`, as in
        vLLM, is appended to the extra keys of the first block of a sequence only (parent None).
        """
        size = self.block_size
        n_full = len(token_ids) // size
        if n_full == 0:
            return []
        ids = token_ids if isinstance(token_ids, list | tuple) else list(token_ids)
        hash_fn = self.hash_fn
        prev = parent or self.none_hash
        out: list[BlockHash] = []
        start = 0
        if cache_salt and parent is None:
            first_keys = (*(extra_keys or ()), cache_salt)
            prev = hash_fn((prev, tuple(ids[0:size]), first_keys))
            out.append(prev)
            start = 1
        digest = self._digest
        if digest is not None:
            extra = cbor_encode(extra_keys)
            block_head = _cbor_head(4, size)
            enc = _UINT_CBOR.__getitem__
            join = b"".join
            for i in range(start, n_full):
                # 0x83: array(3); 0x58 0x20 / head: byte string of the parent digest.
                tokens = join(map(enc, ids[i * size : (i + 1) * size]))
                prev = digest(join((b"\x83", _cbor_head(2, len(prev)), prev, block_head, tokens, extra)))
                out.append(prev)
            return out
        for i in range(start, n_full):
            prev = hash_fn((prev, tuple(ids[i * size : (i + 1) * size]), extra_keys))
            out.append(prev)
        return out


def held_prefix_length(held: Container[int], hashes: Sequence[int]) -> int:
    """How many leading hashes of the chained `hashes` are in `held`. Chained hashes make a
    held hash imply every one before it held, when whoever fills `held` keeps whole prefixes
    (the prefix-cache scorer's LRU evicts tails first; the decision trace keeps whole lines):
    a binary search (log2(n) lookups), not a walk over every hash. vLLM's block hashes and
    the prefix-cache scorer's are both chained."""
    n = len(hashes)
    if n == 0 or hashes[0] not in held:
        return 0
    if hashes[-1] in held:
        return n
    return bisect_held_prefix(held, hashes)


def bisect_held_prefix(held: Container[int], hashes: Sequence[int]) -> int:
    """held_prefix_length, in [1, len(hashes) - 1], of a `held` known to hold the first of
    `hashes` and not the last."""
    lo, hi = 0, len(hashes) - 1  # hashes[lo] held, hashes[hi] not
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if hashes[mid] in held:
            lo = mid
        else:
            hi = mid
    return hi
