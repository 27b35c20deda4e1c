import pytest

from epp.bench.hitrate import best_hit_rate, best_hit_rate_of_tokens
from epp.bench.workloads import BenchRequest, WorkloadParams, no_sharing, shared_prefix_chat


def test_identical_prompts_hit_all_but_the_last_block() -> None:
    tokens = list(range(64))  # 4 blocks of 16
    bound = best_hit_rate_of_tokens([("m", tokens), ("m", tokens)], block_size=16)
    # The second prompt is fully cached, but vLLM always computes the last token: 3 blocks hit.
    assert bound.prompt_tokens == 128
    assert bound.best_hit_tokens == 48


def test_a_longer_prompt_hits_the_shared_full_blocks_only() -> None:
    first = list(range(40))  # 2 full blocks + 8 tokens
    second = list(range(40)) + [999] * 30
    bound = best_hit_rate_of_tokens([("m", first), ("m", second)], block_size=16)
    assert bound.best_hit_tokens == 32
    assert bound.rate == pytest.approx(32 / 110)


def test_blocks_only_match_after_the_same_prefix() -> None:
    a = [1] * 16 + [2] * 16 + [3]
    b = [9] * 16 + [2] * 16 + [3]  # same second block, different first: no hit (chained hashes)
    assert best_hit_rate_of_tokens([("m", a), ("m", b)], 16).best_hit_tokens == 0


def test_adapters_do_not_share_blocks() -> None:
    tokens = list(range(50))
    assert best_hit_rate_of_tokens([("base", tokens), ("lora", tokens)], 16).best_hit_tokens == 0
    assert best_hit_rate_of_tokens([("lora", tokens), ("lora", tokens)], 16).best_hit_tokens == 48


def test_bound_is_zero_without_sharing_and_high_for_shared_prefix_chat() -> None:
    p = WorkloadParams(rate=10, count=60, duration_s=100, nonce="x")
    assert best_hit_rate(no_sharing(p, prompt_chars=2000).requests).rate == 0.0
    assert best_hit_rate(shared_prefix_chat(p).requests).rate > 0.5


def test_bound_uses_arrival_order() -> None:
    long = BenchRequest(0, 2.0, "m", [{"role": "user", "content": "word " * 400}], 8, "s")
    short = BenchRequest(1, 1.0, "m", [{"role": "user", "content": "word " * 400}], 8, "s")
    bound = best_hit_rate([long, short])
    assert 0.4 < bound.rate < 0.5  # the second of two identical prompts hits all but one block


def test_bad_block_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="block_size"):
        best_hit_rate_of_tokens([], block_size=0)
