import itertools
import random

import pytest

from epp.bench.workloads import (
    DEFAULT_LORAS,
    DEFAULT_MODEL,
    ChatShape,
    WorkloadParams,
    build,
    bursty_arrivals,
    lora_mix,
    no_sharing,
    poisson_arrivals,
    shared_prefix_chat,
)


def params(**kw: object) -> WorkloadParams:
    base: dict[str, object] = {"rate": 10.0, "count": 200, "duration_s": 30.0, "seed": 3, "nonce": "t"}
    base.update(kw)
    return WorkloadParams(**base)  # type: ignore[arg-type]


def test_same_seed_gives_identical_requests() -> None:
    for name in ("shared-prefix", "no-sharing", "mixed", "heterogeneous", "bursty", "lora-mix"):
        a, b = build(name, params()), build(name, params())
        assert [(r.arrival_s, r.model, r.messages) for r in a.requests] == \
               [(r.arrival_s, r.model, r.messages) for r in b.requests], name
        c = build(name, params(seed=4))
        assert [r.messages for r in c.requests] != [r.messages for r in a.requests], name


def test_poisson_arrivals_are_bounded_by_count_and_time() -> None:
    by_count = poisson_arrivals(100.0, 50, 1000.0, random.Random(1))
    assert len(by_count) == 50
    by_time = poisson_arrivals(10.0, 10_000, 5.0, random.Random(1))
    assert 20 < len(by_time) < 90 and max(by_time) <= 5.0
    assert by_time == sorted(by_time)


def test_bursty_arrivals_are_denser_in_the_middle_third() -> None:
    times = bursty_arrivals(5.0, 4.0, 100_000, 30.0, random.Random(2))
    thirds = [sum(1 for t in times if k * 10 <= t < (k + 1) * 10) for k in range(3)]
    assert thirds[1] > 2.5 * thirds[0] and thirds[1] > 2.5 * thirds[2]


def test_shared_prefix_conversations_grow_turn_by_turn() -> None:
    w = shared_prefix_chat(params(count=300), ChatShape(groups=2, users_per_group=2, max_turns=3))
    by_session: dict[str, list[list[dict[str, str]]]] = {}
    for r in w.requests:
        by_session.setdefault(r.session, []).append(r.messages)
    assert any(len(turns) == 3 for turns in by_session.values())
    for turns in by_session.values():
        assert len(turns) <= 3
        for earlier, later in itertools.pairwise(turns):
            assert later[:len(earlier)] == earlier  # the previous prompt is a prefix
            assert later[len(earlier)]["role"] == "assistant"
    systems = {r.messages[0]["content"] for r in w.requests}
    assert len(systems) == 2 and all(s.startswith("[t]") for s in systems)
    assert [r.index for r in w.requests] == list(range(len(w.requests)))


def test_no_sharing_prompts_start_unique() -> None:
    w = no_sharing(params(count=50), prompt_chars=200)
    firsts = [r.messages[0]["content"][:12] for r in w.requests]
    assert len(set(firsts)) == len(firsts)
    assert all(len(r.messages) == 1 for r in w.requests)


def test_lora_mix_uses_base_and_adapters() -> None:
    w = lora_mix(params(count=300))
    models = {r.model for r in w.requests}
    assert models == {DEFAULT_MODEL, *DEFAULT_LORAS}


def test_nonce_separates_phases() -> None:
    a = shared_prefix_chat(params(nonce="phase-a")).requests[0].messages[0]["content"]
    b = shared_prefix_chat(params(nonce="phase-b")).requests[0].messages[0]["content"]
    assert a[:20] != b[:20]


@pytest.mark.parametrize("field,value", [("rate", 0.0), ("count", 0), ("duration_s", -1.0), ("max_tokens", 0)])
def test_invalid_params_are_rejected(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field.split("_")[0]):
        build("shared-prefix", params(**{field: value}))


def test_unknown_workload_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="shared-prefix"):
        build("nope", params())


def test_mixed_is_half_chat_half_unique_with_short_and_long_prompts_interleaved() -> None:
    from epp.bench.workloads import MixShape, mixed

    w = mixed(params(count=400, duration_s=60.0), MixShape())
    chat = [r for r in w.requests if r.session.startswith("g")]
    unique = [r for r in w.requests if r.session.startswith("r")]
    assert len(chat) + len(unique) == len(w.requests) == 400
    assert 0.4 < len(chat) / len(w.requests) < 0.6  # seeded coin flips around one half
    sizes = [len(r.messages[0]["content"]) for r in unique]
    short = [s < 2_000 for s in sizes]
    assert short[:4] == [True, False, True, False]  # strictly alternating
    assert all(a != b for a, b in itertools.pairwise(short))
    assert min(s for s in sizes if s > 2_000) >= 16_000
    # Chat turns grow a shared system prompt; unique prompts share nothing with each other.
    assert len({r.messages[0]["content"] for r in chat}) <= MixShape().chat.groups
    assert len({r.messages[0]["content"][:40] for r in unique}) == len(unique)
    assert [r.index for r in w.requests] == list(range(len(w.requests)))
    assert all(a.arrival_s <= b.arrival_s for a, b in itertools.pairwise(w.requests))


def test_mixed_rejects_a_share_outside_0_1() -> None:
    from epp.bench.workloads import MixShape, mixed

    with pytest.raises(ValueError, match="chat_share"):
        mixed(params(), MixShape(chat_share=1.5))


def test_heterogeneous_is_no_sharing_traffic_on_a_pool_with_one_slow_pod() -> None:
    from epp.bench.workloads import HETEROGENEOUS_SLOWDOWN, heterogeneous, pod_profile

    het, plain = heterogeneous(params()), no_sharing(params())
    assert het.name == "heterogeneous" and "slower" in het.title
    assert [r.messages for r in het.requests] == [r.messages for r in plain.requests]
    assert pod_profile("heterogeneous") == {0: HETEROGENEOUS_SLOWDOWN} and HETEROGENEOUS_SLOWDOWN == 2.0
    assert pod_profile("no-sharing") == {} and pod_profile("mixed") == {}
