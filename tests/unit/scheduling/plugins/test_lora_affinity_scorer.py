from epp.scheduling.plugins.lora_affinity_scorer import LoraAffinityScorer
from tests.unit.scheduling.sched_fakes import endpoint, request, state


def _eps() -> list:  # type: ignore[type-arg]
    return [
        endpoint("active", active_loras=frozenset({"sql"}), max_loras=2),
        endpoint("room", active_loras=frozenset({"x"}), max_loras=2),
        endpoint(
            "waiting", active_loras=frozenset({"x", "y"}), waiting_loras=frozenset({"sql"}), max_loras=2
        ),
        endpoint("full", active_loras=frozenset({"x", "y"}), max_loras=2),
    ]


def test_active_beats_can_load_beats_waiting_beats_full() -> None:
    scores = LoraAffinityScorer().score(state(), request(model="sql"), _eps())
    assert scores == [1.0, 0.8, 0.6, 0.0]


def test_listed_base_model_is_neutral() -> None:
    scorer = LoraAffinityScorer(params=LoraAffinityScorer.Params(base_models=["llama"]))
    assert scorer.score(state(), request(model="llama"), _eps()) == [1.0] * 4


def test_pool_without_lora_support_is_neutral() -> None:
    eps = [endpoint("a"), endpoint("b")]
    assert LoraAffinityScorer().score(state(), request(model="anything"), eps) == [1.0, 1.0]
