from __future__ import annotations

import logging
import random

import pytest

from epp.prefixcache.block_hash import BlockHasher
from epp.prefixcache.events import BlockStored
from epp.prefixcache.hash_check import HashSettingsChecker
from epp.sim.kv_cache import PrefixCachingBlockPool

from .kv_fixtures import random_tokens, serve


def pod_events(seed: str, block_size: int = 16, requests: int = 20, algo: str = "sha256",
               int_hashes: bool = True) -> list[BlockStored]:
    """BlockStored events of a simulated pod hashing with `seed`; shared prefixes make most
    events continue a chain (parent set), as on a real pod."""
    hasher = BlockHasher(algo, block_size=block_size, seed=seed)
    pool = PrefixCachingBlockPool(num_blocks=512, block_size=block_size, int_hashes=int_hashes)
    rng = random.Random(7)
    system = random_tokens(rng, block_size * 3)
    out: list[BlockStored] = []
    for _ in range(requests):
        serve(pool, hasher, system + random_tokens(rng, block_size * 2 + 3))
        out.extend(e for e in pool.drain_events() if isinstance(e, BlockStored))
    return out


def test_matching_settings_report_no_mismatch() -> None:
    checker = HashSettingsChecker(BlockHasher(block_size=16, seed="42"), min_samples=8)
    events = pod_events("42")
    assert any(e.parent_block_hash is not None for e in events)
    for e in events:
        checker.check_stored("pod", e)
    assert checker.totals.stored_checked >= 40
    assert checker.totals.stored_mismatched == 0
    # Chained events were verified through remembered parents, not skipped.
    assert checker.totals.stored_skipped == 0
    assert checker.mismatch_ratio("pod") == 0.0


def test_wrong_seed_is_detected_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    checker = HashSettingsChecker(BlockHasher(block_size=16, seed="0"), min_samples=8)
    with caplog.at_level(logging.ERROR, logger="epp.prefixcache.hash_check"):
        for e in pod_events("42"):
            checker.check_stored("pod", e)
    assert checker.mismatch_ratio("pod") == 1.0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # rate-limited
    assert "tokenProcessorConfig.hashSeed" in errors[0] and "PYTHONHASHSEED differs" in errors[0]
    assert "hashAlgo" not in errors[0]


@pytest.mark.parametrize("int_hashes", [True, False])
def test_both_hash_forms_match_and_the_form_is_recorded(int_hashes: bool) -> None:
    checker = HashSettingsChecker(BlockHasher(block_size=16, seed="42"), min_samples=8)
    for e in pod_events("42", int_hashes=int_hashes):
        checker.check_stored("pod", e)
    assert checker.totals.stored_checked >= 40 and checker.totals.stored_mismatched == 0
    assert checker.pod("pod").hash_form == ("int" if int_hashes else "bytes")


@pytest.mark.parametrize("int_hashes", [True, False])
@pytest.mark.parametrize("pod_algo", ["sha256_cbor", "xxhash", "xxhash_cbor"])
def test_wrong_algorithm_is_named(pod_algo: str, int_hashes: bool, caplog: pytest.LogCaptureFixture) -> None:
    checker = HashSettingsChecker(BlockHasher("sha256", block_size=16, seed="42"), min_samples=8)
    with caplog.at_level(logging.ERROR, logger="epp.prefixcache.hash_check"):
        for e in pod_events("42", algo=pod_algo, int_hashes=int_hashes):
            checker.check_stored("pod", e)
    assert checker.mismatch_ratio("pod") == 1.0
    assert checker.pod("pod").diagnosis.startswith(f"tokenProcessorConfig.hashAlgo: the pod uses {pod_algo!r}")
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"the pod uses {pod_algo!r}" in error


def test_pod_on_vllms_default_seed_is_named() -> None:
    # The EPP was given a seed, the pods run without PYTHONHASHSEED (vLLM's fixed seed).
    checker = HashSettingsChecker(BlockHasher("sha256_cbor", block_size=16, seed="42"), min_samples=8)
    for e in pod_events("vllm-none-hash", algo="sha256_cbor"):
        checker.check_stored("pod", e)
    assert "'vllm-none-hash'" in checker.pod("pod").diagnosis
    assert checker.pod("pod").diagnosis.startswith("tokenProcessorConfig.hashSeed")


def test_bytes_hashes_isolate_the_seed_on_chained_events() -> None:
    # With raw digests the pod's parent is known exactly: continuing events match the EPP's
    # algorithm though NONE_HASH differs, so only the first blocks fail.
    checker = HashSettingsChecker(BlockHasher(block_size=16, seed="0"), min_samples=8)
    events = pod_events("42", int_hashes=False)
    for e in events:
        checker.check_stored("pod", e)
    firsts = sum(len(e.block_hashes) for e in events if e.parent_block_hash is None)
    assert checker.totals.stored_mismatched == firsts
    assert checker.totals.stored_checked > firsts
    assert "PYTHONHASHSEED differs" in checker.pod("pod").diagnosis


def test_wrong_block_size_is_named(caplog: pytest.LogCaptureFixture) -> None:
    checker = HashSettingsChecker(BlockHasher(block_size=16), min_samples=4)
    with caplog.at_level(logging.ERROR, logger="epp.prefixcache.hash_check"):
        for e in pod_events("vllm-none-hash", block_size=32, requests=6):
            checker.check_stored("pod", e)
    assert checker.pod("pod").block_size_mismatches > 0
    assert any("blocks of 32 tokens" in r.getMessage() and "blockSize" in r.getMessage()
               for r in caplog.records)


def test_hits_the_index_never_predicted_count_as_mismatch() -> None:
    checker = HashSettingsChecker(BlockHasher(block_size=16), min_samples=10)
    for _ in range(10):
        checker.check_hit("pod", predicted_blocks=0, cached_tokens=64)
    checker.check_hit("pod", predicted_blocks=0, cached_tokens=3)  # no full block: ignored
    assert checker.totals.hit_checked == 10
    assert checker.mismatch_ratio("pod") == 1.0
    for _ in range(30):
        checker.check_hit("pod", predicted_blocks=4, cached_tokens=64)
    assert checker.mismatch_ratio("pod") == pytest.approx(10 / 40)
    checker.forget_pod("pod")
    assert checker.mismatch_ratio("pod") == 0.0
