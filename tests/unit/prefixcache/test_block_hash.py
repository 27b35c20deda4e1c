"""Golden values were computed with the reference implementation vLLM uses:
hashlib.sha256(cbor2.dumps(obj, canonical=True)) and hashlib.sha256(pickle.dumps(obj, 5))."""

import random
import time

import pytest

from epp.prefixcache.block_hash import BlockHasher, cbor_encode, lora_extra_keys, wire_hash

CBOR_NONE_HASH = "9bd96a485ad84efdafb72ee48a1d7a69bcead0f8f0433173941b276b9581eef0"
CBOR_B1 = "dc918a88b139e5afe60b88eda27508d4aee16c10fdc354791efea06206ac0749"
CBOR_B2 = "c300ec275d7bf08af8fc63e76cdc0086911bbc7091e03c5cf892553bef84ef0c"
CBOR_LORA_B1 = "0899ca4fbe453486fa65d7afd2c238e62f6dc6c56be7074a6e46825a77e63d98"
PICKLE_NONE_HASH = "066b1e8987e027138e98701c46128929378935f9b6cd1549105ae6b4f0d71198"
PICKLE_B1 = "fe8fa5dda3210d0ca2031e37cbe3b001186773cd1c710beb2d45fcb51d434798"
PICKLE_B2 = "8be7aaa33831156d316f1f463ae57e643deb63f42e633e2d631df88815cc4629"
PICKLE_LORA_B1 = "aa1d2c75de82425493adb582e336eca2724cc6b651c806b7b0d3099b5bf46e1c"


def test_cbor_matches_cbor2_canonical() -> None:
    assert (
        cbor_encode((b"ab", (1, 2, -3, 300), None, True, "lora")).hex()
        == "854261628401022219012cf6f5646c6f7261"
    )
    assert cbor_encode(70000).hex() == "1a00011170"
    assert cbor_encode(2**40).hex() == "1b0000010000000000"


@pytest.mark.parametrize(
    ("algo", "none_hash", "b1", "b2", "lora_b1"),
    [
        ("sha256_cbor", CBOR_NONE_HASH, CBOR_B1, CBOR_B2, CBOR_LORA_B1),
        ("sha256", PICKLE_NONE_HASH, PICKLE_B1, PICKLE_B2, PICKLE_LORA_B1),
    ],
)
def test_golden_chain(algo: str, none_hash: str, b1: str, b2: str, lora_b1: str) -> None:
    hasher = BlockHasher(algo, block_size=16, seed="vllm-none-hash")
    assert hasher.none_hash.hex() == none_hash
    # 40 tokens -> 2 full blocks; the partial third block is not hashed.
    assert [h.hex() for h in hasher.hash_tokens(list(range(40)))] == [b1, b2]
    assert hasher.hash_tokens(list(range(16)), extra_keys=lora_extra_keys("lora-a"))[0].hex() == lora_b1
    # chaining from an explicit parent continues the same chain
    assert hasher.hash_tokens(list(range(16, 32)), parent=bytes.fromhex(b1))[0].hex() == b2


def test_seed_from_pythonhashseed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    assert BlockHasher("sha256_cbor").hash_tokens(list(range(100000, 100016)))[0].hex() == (
        "12b9915ccff0d43ee2c08a4f3c5f3ec5b92743a7e2a9db6529292a955ccbf4db"
    )


def test_cache_salt_only_on_first_block() -> None:
    hasher = BlockHasher("sha256_cbor")
    plain = hasher.hash_tokens(list(range(32)))
    salted = hasher.hash_tokens(list(range(32)), cache_salt="tenant-1")
    assert salted[0] == hasher.hash_block(None, range(16), ("tenant-1",))
    assert salted[1] == hasher.hash_block(salted[0], range(16, 32))
    assert salted[0] != plain[0]


def test_wire_hash() -> None:
    digest = bytes.fromhex(CBOR_B1)
    assert wire_hash(digest) == int.from_bytes(digest, "big") & (2**64 - 1) == 2233398808101521225
    assert wire_hash(digest, as_int=False) == digest


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
