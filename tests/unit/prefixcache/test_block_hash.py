"""Block hashes against tests/unit/prefixcache/vllm_reference.py, a straight reimplementation
of vLLM's hashing with hashlib/pickle/cbor2/xxhash (never against our own beliefs)."""

import random
import time

import cbor2
import pytest

from epp.prefixcache.block_hash import (
    HASH_ALGOS,
    BlockHasher,
    UnreproducibleSeedError,
    cbor_encode,
    fold_hash,
    lora_extra_keys,
    process_seed,
    resolve_seed,
    wire_hash,
)

from . import vllm_reference as ref


@pytest.mark.parametrize(
    "value",
    [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -1, -24, -25, -(2**40),
     b"", b"\x00" * 32, "", "lora-a", "ü" * 30, None, True, False,
     (b"\x01" * 32, tuple(range(300, 316)), None), (b"ab", (1, 2, -3, 300), ("lora", "salt"))],
)
def test_cbor_matches_cbor2_canonical(value: object) -> None:
    assert cbor_encode(value) == cbor2.dumps(value, canonical=True)


@pytest.mark.parametrize("algo", HASH_ALGOS)
@pytest.mark.parametrize(("lora", "salt"), [(None, None), ("lora-a", None), (None, "tenant-1"),
                                            ("lora-a", "tenant-1")])
def test_hash_tokens_equal_vllm_reference(algo: str, lora: str | None, salt: str | None) -> None:
    rng = random.Random(f"{algo}{lora}{salt}")
    for block_size in (1, 16, 32):
        for _ in range(15):
            tokens = [rng.randrange(0, 2**17 if rng.random() < 0.9 else 2**31) for _ in range(rng.randrange(0, 200))]
            seed = rng.choice(["vllm-none-hash", "0", "42", str(rng.randrange(2**32))])
            hasher = BlockHasher(algo, block_size, seed)
            assert hasher.none_hash == ref.HASH_FUNCTIONS[algo](seed)
            mine = hasher.hash_tokens(tokens, extra_keys=lora_extra_keys(lora), cache_salt=salt)
            assert mine == ref.request_block_hashes(algo, seed, block_size, tokens, lora, salt)
            assert [fold_hash(d) for d in mine] == [ref.maybe_convert_block_hash(d) for d in mine]


@pytest.mark.parametrize("algo", HASH_ALGOS)
def test_chain_continues_from_a_parent(algo: str) -> None:
    tokens = list(range(1000, 1064))
    full = ref.request_block_hashes(algo, "7", 16, tokens, "l")
    hasher = BlockHasher(algo, 16, "7")
    assert hasher.hash_tokens(tokens[32:], extra_keys=lora_extra_keys("l"), parent=full[1]) == full[2:]


@pytest.mark.parametrize("algo", HASH_ALGOS)
def test_seed_resolves_as_in_vllm(algo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    expected = ref.vllm_none_hash_seed(algo)
    if expected is None:  # xxhash: random per vLLM process, nobody can reproduce it
        with pytest.raises(UnreproducibleSeedError, match="PYTHONHASHSEED"):
            resolve_seed(None, algo)
        with pytest.raises(UnreproducibleSeedError):
            BlockHasher(algo)
        assert process_seed(algo) != process_seed(algo)  # the simulator mimics the random seed
    else:
        assert resolve_seed(None, algo) == expected == BlockHasher(algo).seed
    monkeypatch.setenv("PYTHONHASHSEED", "123")
    assert resolve_seed(None, algo) == ref.vllm_none_hash_seed(algo) == "123"
    assert resolve_seed("9", algo) == "9"


def test_fold_hash_takes_the_low_64_bits_of_either_form() -> None:
    digest = ref.sha256_cbor("x")
    as_int = ref.maybe_convert_block_hash(digest, use_int=True)
    assert fold_hash(digest) == fold_hash(as_int) == as_int == wire_hash(digest)
    assert wire_hash(digest, as_int=False) == ref.maybe_convert_block_hash(digest, use_int=False) == digest
    assert fold_hash(-1) == 2**64 - 1  # a uint64 some decoders read as signed
    assert fold_hash(b"\x01\x02") == 0x0102


def test_unknown_algo() -> None:
    with pytest.raises(ValueError, match="unknown prefix-caching hash algo"):
        BlockHasher("md5")


def test_hashing_4k_tokens_is_fast() -> None:
    tokens = [random.randrange(128_256) for _ in range(4096)]
    hasher = BlockHasher("sha256_cbor")
    start = time.perf_counter()
    for _ in range(10):
        assert len(hasher.hash_tokens(tokens)) == 256
    # generous bound (~0.4 ms measured per call); only catches pathological regressions
    assert (time.perf_counter() - start) / 10 < 0.05
