import zlib

import pytest

from epp.datastore.datastore import Datastore
from epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer, prefix_block_hashes
from epp.scheduling.registry import ConfigError, parse_params
from epp.scheduling.types import ProfileRunResult, SchedulingResult
from tests.unit.scheduling.sched_fakes import context, endpoint, pool, request, state

BLOCK = 64


def _scorer(**params: object) -> PrefixCacheScorer:
    values = {"auto_tune": False, "block_size": BLOCK, **params}
    return PrefixCacheScorer(name="prefix", params=PrefixCacheScorer.Params(**values))  # type: ignore[arg-type]


def _send(scorer: PrefixCacheScorer, prompt: str, eps: list, target_index: int) -> list[float]:  # type: ignore[type-arg]
    """Score `prompt` over eps, then record it as sent to eps[target_index]."""
    st = state()
    req = request(prompt)
    scores = scorer.score(st, req, eps)
    result = SchedulingResult({"default": ProfileRunResult(targets=[eps[target_index]])}, "default")
    scorer.pre_request(st, req, result)
    return scores


def test_hashes_are_chained_stable_zlib_checksums() -> None:
    text = "a" * BLOCK + "b" * BLOCK + "c" * 10  # the short tail block is ignored
    hashes = prefix_block_hashes(text, "m", BLOCK, 256)
    assert len(hashes) == 2
    crc = zlib.crc32(b"a" * BLOCK, zlib.crc32(b"m"))
    adler = zlib.adler32(b"a" * BLOCK, zlib.adler32(b"m"))
    assert hashes[0] == (crc << 32) | adler  # stable across processes (no hash())
    # Chaining: block 2 of a different first block hashes differently.
    other = prefix_block_hashes("x" * BLOCK + "b" * BLOCK, "m", BLOCK, 256)
    assert other[1] != hashes[1]


def test_hashes_depend_on_model_and_are_truncated_to_max_blocks() -> None:
    text = "z" * BLOCK * 10
    assert prefix_block_hashes(text, "m1", BLOCK, 256) != prefix_block_hashes(text, "m2", BLOCK, 256)
    assert len(prefix_block_hashes(text, "m", BLOCK, 4)) == 4
    assert prefix_block_hashes("short", "m", BLOCK, 4) == []


def test_unknown_prompt_scores_zero_and_sent_prompt_sticks_to_its_pod() -> None:
    scorer = _scorer()
    eps = pool(3)
    prompt = "system: you are helpful. " * 40
    assert _send(scorer, prompt, eps, target_index=1) == [0.0, 0.0, 0.0]
    assert scorer.score(state(), request(prompt), eps) == [0.0, 1.0, 0.0]


def test_partial_prefix_match_scores_the_matched_fraction() -> None:
    scorer = _scorer()
    eps = pool(2)
    shared = "s" * BLOCK * 3
    _send(scorer, shared + "first tail " * 20, eps, target_index=0)
    second = shared + "other tail " * 20  # 3 shared of 6 full blocks
    assert len(prefix_block_hashes(second, "base-model", BLOCK, 256)) == 6
    assert scorer.score(state(), request(second), eps) == [0.5, 0.0]


def test_hashes_computed_once_per_cycle_and_cached_tokens_published() -> None:
    scorer = _scorer()
    eps = pool(2)
    prompt = "q" * BLOCK * 4
    _send(scorer, prompt, eps, target_index=0)
    st = state()
    scorer.score(st, request(prompt), eps)
    cycle = st[scorer.state_key]
    scorer.score(st, request(prompt), eps[:1])  # e.g. a second profile in the same cycle
    assert st[scorer.state_key] is cycle
    # 4 blocks x (64 bytes / 4 chars per token) = 64 tokens cached on pod-0.
    assert st["prefix.cached-tokens"] == {eps[0].key: 64, eps[1].key: 0}


def test_pre_request_records_first_target_of_every_profile() -> None:
    scorer = _scorer()
    eps = pool(3)
    prompt = "p" * BLOCK * 2
    st = state()
    req = request(prompt)
    scorer.score(st, req, eps)
    result = SchedulingResult(
        {
            "decode": ProfileRunResult(targets=[eps[0], eps[2]]),
            "prefill": ProfileRunResult(targets=[eps[1]]),
        },
        "decode",
    )
    scorer.pre_request(st, req, result)
    assert [scorer.cached_blocks(e.key) for e in eps] == [2, 2, 0]


def test_lru_is_bounded_and_evicts_tails_before_prefixes() -> None:
    scorer = _scorer(lru_capacity_per_server=6)
    eps = pool(1)
    shared = "h" * BLOCK * 2
    for i in range(5):
        _send(scorer, shared + f"{i}" * BLOCK * 2, eps, target_index=0)
    assert scorer.cached_blocks(eps[0].key) == 6
    # The shared head survives every eviction; old tails are gone, the latest is whole.
    oldest = shared + "0" * BLOCK * 2
    latest = shared + "4" * BLOCK * 2
    assert scorer.score(state(), request(oldest), eps) == [0.5]
    assert scorer.score(state(), request(latest), eps) == [1.0]


def test_auto_tune_uses_pod_block_size_and_gpu_blocks() -> None:
    scorer = PrefixCacheScorer(params=PrefixCacheScorer.Params(auto_tune=True, block_size=999))
    eps = [endpoint("a", block_size=8, num_gpu_blocks=3)]
    st = state()
    scorer.score(st, request("x" * 32 * 10), eps)
    assert st[scorer.state_key].block_size == 32  # 8 tokens x 4 characters
    scorer.pre_request(st, request(), SchedulingResult({"d": ProfileRunResult(targets=eps)}, "d"))
    assert scorer.cached_blocks(eps[0].key) == 3  # capacity from num_gpu_blocks


def test_cache_salt_separates_tenants() -> None:
    scorer = _scorer()
    eps = pool(1)
    prompt = "t" * BLOCK * 2
    _send(scorer, prompt, eps, target_index=0)
    salted = request(prompt, body={"cache_salt": "tenant-b"})
    assert scorer.score(state(), salted, eps) == [0.0]


def test_removed_endpoint_forgets_its_blocks() -> None:
    ds = Datastore()
    ep = ds.upsert_endpoint(endpoint("a"))
    scorer = PrefixCacheScorer(
        name="prefix", params=PrefixCacheScorer.Params(auto_tune=False), ctx=context(ds)
    )
    _send(scorer, "r" * BLOCK * 2, [ep], target_index=0)
    assert scorer.cached_blocks(ep.key) == 2
    ds.remove_endpoint(ep.key)
    assert scorer.cached_blocks(ep.key) == 0


def test_non_positive_parameters_are_config_errors() -> None:
    where = "s.yaml: plugin 'prefix' (prefix-cache-scorer)"
    with pytest.raises(ConfigError, match=r"'blockSize' must be a positive integer, got 0"):
        parse_params(PrefixCacheScorer.Params, {"blockSize": 0}, where)
    with pytest.raises(ConfigError, match=r"parameter 'blockSize' must be an integer"):
        parse_params(PrefixCacheScorer.Params, {"blockSize": "64"}, where)


# --- letting go (SGLang-style thresholds) ---------------------------------------------------

PROMPT = "".join(chr(97 + i % 26) for i in range(BLOCK * 8))


def test_affinity_yields_when_the_matching_pod_is_much_busier() -> None:
    scorer = _scorer(balance_abs_threshold=4, balance_rel_threshold=1.5)
    eps = pool(3)
    _send(scorer, PROMPT, eps, 0)
    eps[0].inflight = 6  # 6 - 1 > 4 and 6 > 1.5 x 1
    eps[1].inflight = eps[2].inflight = 1
    assert scorer.score(state(), request(PROMPT), eps) == [0.0, 0.0, 0.0]


def test_affinity_holds_within_the_thresholds() -> None:
    scorer = _scorer(balance_abs_threshold=4, balance_rel_threshold=1.5)
    eps = pool(3)
    _send(scorer, PROMPT, eps, 0)
    eps[0].inflight = 5  # gap 4 is not more than 4
    eps[1].inflight = eps[2].inflight = 1
    assert scorer.score(state(), request(PROMPT), eps) == [1.0, 0.0, 0.0]
    eps[0].inflight, eps[1].inflight, eps[2].inflight = 20, 14, 14  # gap 6 > 4 but 20 < 1.5 x 14
    assert scorer.score(state(), request(PROMPT), eps) == [1.0, 0.0, 0.0]


def test_scraped_load_counts_when_it_is_higher_than_ours() -> None:
    # Other EPP replicas' traffic shows only in the scrape: running + waiting.
    scorer = _scorer(balance_abs_threshold=4)
    eps = pool(2)
    _send(scorer, PROMPT, eps, 0)
    eps[0].metrics.running_requests, eps[0].metrics.waiting_queue_size = 4, 3
    assert scorer.score(state(), request(PROMPT), eps) == [0.0, 0.0]


def test_only_the_busy_pod_lets_go() -> None:
    scorer = _scorer(balance_abs_threshold=2)
    eps = pool(3)
    _send(scorer, PROMPT, eps, 0)
    _send(scorer, PROMPT, eps, 1)
    eps[0].inflight, eps[1].inflight = 9, 1
    assert scorer.score(state(), request(PROMPT), eps) == [0.0, 1.0, 0.0]


def test_weak_matches_below_the_cache_threshold_score_zero() -> None:
    scorer = _scorer(cache_threshold=0.3)
    eps = pool(2)
    _send(scorer, PROMPT[: BLOCK * 2], eps, 0)  # 2 of 8 blocks match on pod 0: 0.25 < 0.3
    _send(scorer, PROMPT[: BLOCK * 4], eps, 1)  # 4 of 8 on pod 1: 0.5
    assert scorer.score(state(), request(PROMPT), eps) == [0.0, 0.5]


def test_let_go_is_off_by_default_as_gie() -> None:
    scorer = _scorer()
    eps = pool(2)
    _send(scorer, PROMPT, eps, 0)
    eps[0].inflight = 1000
    assert scorer.score(state(), request(PROMPT), eps) == [1.0, 0.0]


@pytest.mark.parametrize(("params", "message"), [
    ({"cacheThreshold": 1.5}, "'cacheThreshold' must be within"),
    ({"balanceAbsThreshold": -1}, "'balanceAbsThreshold' must be >= 0"),
    ({"balanceRelThreshold": 0.5}, "'balanceRelThreshold' must be >= 1"),
])
def test_let_go_parameters_are_validated(params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_params(PrefixCacheScorer.Params, params, "t.yaml")


def test_match_lengths_equal_a_walk_from_the_first_block() -> None:
    # GIE's matchLongestPrefix walks a prompt's blocks from the first and stops at the first
    # one the server does not hold. The one-pass match (a length tried from the endpoint
    # before, then a binary search) must give that walk's length on every endpoint, also
    # after evictions, with prompts sharing system prompts of several lengths.
    import random

    rng = random.Random(11)
    eps = pool(24)
    scorer = _scorer(lru_capacity_per_server=90)
    systems = ["".join(rng.choice("abcdefgh") for _ in range(BLOCK * k)) for k in (3, 7, 12)]
    prompts = [rng.choice(systems) + "".join(rng.choice("xyz") for _ in range(rng.randrange(0, BLOCK * 20)))
               for _ in range(60)]
    firsts = set()
    for step in range(400):
        prompt = rng.choice(prompts)
        cycle = scorer.cycle_state(state(), request(prompt), eps)
        firsts.add(cycle.hashes[0])
        # Whole prompts, and prefixes of them (a P/D prefill's or a peer's record of a shorter one).
        scorer.record(rng.choice(eps), cycle.hashes[: rng.randrange(1, len(cycle.hashes) + 1)])
        if step == 200:
            scorer._on_endpoint_event("removed", eps[3])
    # The first blocks' holders are exactly the endpoints whose LRU holds them, after evictions
    # and a removal; none is kept without holders.
    assert {h: holders for h, holders in scorer._first_holders.items()} == {
        h: {key for key, lru in scorer._lru.items() if h in lru}
        for h in firsts if any(h in lru for lru in scorer._lru.values())}
    checked = partial = 0
    for prompt in prompts:
        st = state()
        scorer.score(st, request(prompt), eps)
        cycle = scorer.cycle_state(st, request(prompt), eps)
        for ep in eps:
            held = scorer._lru.get(ep.key, {})
            walked = 0
            while walked < len(cycle.hashes) and cycle.hashes[walked] in held:
                walked += 1
            assert cycle.matched_blocks[ep.key] == walked, (prompt[:20], ep.key)
            checked += walked > 0
            partial += 0 < walked < len(cycle.hashes)
    # The run covered what the shortcut decides: many holders, most of them partial.
    assert checked > 300 and partial > 200
