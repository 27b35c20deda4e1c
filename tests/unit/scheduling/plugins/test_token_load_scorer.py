import pytest

from epp.scheduling.plugins.token_load_scorer import GIE_DEFAULT_QUEUE_THRESHOLD_TOKENS, TokenLoadScorer
from epp.scheduling.registry import ConfigError, parse_params
from tests.unit.scheduling.sched_fakes import endpoint, request, state


def _with_tokens(name: str, tokens: int, peer: int = 0):  # type: ignore[no-untyped-def]
    ep = endpoint(name)
    ep.inflight_tokens, ep.peer_inflight_tokens = tokens, peer
    return ep


def test_score_is_one_minus_tokens_over_threshold_as_gie() -> None:
    scorer = TokenLoadScorer(params=TokenLoadScorer.Params(queue_threshold_tokens=1000))
    eps = [_with_tokens("a", 0), _with_tokens("b", 250), _with_tokens("c", 600, peer=400), _with_tokens("d", 5000)]
    assert scorer.score(state(), request(), eps) == [1.0, 0.75, 0.0, 0.0]


def test_default_threshold_is_gie_s() -> None:
    assert TokenLoadScorer().params.queue_threshold_tokens == GIE_DEFAULT_QUEUE_THRESHOLD_TOKENS == 4_194_304
    scores = TokenLoadScorer().score(state(), request(), [_with_tokens("a", 0), _with_tokens("b", 4_194_304 // 2)])
    assert scores == [1.0, 0.5]


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"t.yaml: parameter 'queueThresholdTokens' must be > 0"):
        parse_params(TokenLoadScorer.Params, {"queueThresholdTokens": 0}, "t.yaml")
