"""session-affinity-scorer: llm-d's token encoding, the session-id hash, yielding when the
pod is gone or saturated, and parameter validation at config load."""

from __future__ import annotations

import base64

import pytest

from epp.config.loader import parse_scheduler_config
from epp.datastore.datastore import Datastore
from epp.scheduling.plugins.session_affinity_scorer import (
    SessionAffinityScorer,
    decode_token,
    encode_token,
)
from epp.scheduling.registry import ConfigError, PluginContext
from epp.scheduling.types import CycleState, LLMRequest, ProfileRunResult, SchedulingResult
from tests.unit.scheduling.sched_fakes import endpoint, pool


def _req(**headers: str) -> LLMRequest:
    return LLMRequest(request_id="r", model="m", target_model="m", headers=headers)


def _scorer(**params: object) -> SessionAffinityScorer:
    return SessionAffinityScorer(params=SessionAffinityScorer.Params(**params))  # type: ignore[arg-type]


def test_token_is_base64_of_namespace_slash_name_like_llm_d() -> None:
    ep = endpoint("vllm-0")
    # llm-d: base64.StdEncoding.EncodeToString([]byte(pod.ID.String())), ID = "namespace/name".
    assert encode_token(ep) == base64.standard_b64encode(b"default/vllm-0").decode() == "ZGVmYXVsdC92bGxtLTA="
    assert decode_token("ZGVmYXVsdC92bGxtLTA=") == "default/vllm-0"
    assert decode_token("not base64!") == ""


def test_token_header_prefers_its_pod_and_pre_request_writes_the_response_header() -> None:
    eps = pool(3)
    s = _scorer()
    assert s.score(CycleState(), _req(), eps) == [0.0, 0.0, 0.0]  # no token: abstain
    token = encode_token(eps[2])
    assert s.score(CycleState(), _req(**{"x-session-token": token}), eps) == [0.0, 0.0, 1.0]
    result = SchedulingResult({"default": ProfileRunResult([eps[1]])}, "default")
    s.pre_request(CycleState(), _req(), result)
    assert result.response_headers == {"x-session-token": encode_token(eps[1])}


def test_custom_header_and_profile_name() -> None:
    eps = pool(2)
    s = _scorer(encoded_endpoint_header_config={"header": "X-Session-Token-Prefill"},
                profile_name="prefill")
    assert s.score(CycleState(), _req(**{"x-session-token-prefill": encode_token(eps[0])}), eps) == [1.0, 0.0]
    result = SchedulingResult({"decode": ProfileRunResult([eps[1]]), "prefill": ProfileRunResult([eps[0]])},
                              "decode")
    s.pre_request(CycleState(), _req(), result)
    assert result.response_headers == {"x-session-token-prefill": encode_token(eps[0])}


def test_yields_when_the_pod_is_gone_or_saturated() -> None:
    eps = pool(3)
    token = {"x-session-token": encode_token(eps[0])}
    s = _scorer()
    assert s.score(CycleState(), _req(**token), eps[1:]) == [0.0, 0.0]  # gone
    eps[0].metrics.waiting_queue_size = 5
    assert s.score(CycleState(), _req(**token), eps) == [0.0, 0.0, 0.0]  # queue at the threshold
    eps[0].metrics.waiting_queue_size = 0
    eps[0].metrics.kv_cache_usage = 0.85
    assert s.score(CycleState(), _req(**token), eps) == [0.0, 0.0, 0.0]  # KV cache full
    assert _scorer(yield_when_saturated=False).score(CycleState(), _req(**token), eps)[0] == 1.0
    assert _scorer(kv_cache_util_threshold=0.9).score(CycleState(), _req(**token), eps)[0] == 1.0


def test_session_id_hash_is_sticky_spreads_and_moves_only_the_gone_pods_sessions() -> None:
    eps = pool(4)
    s = _scorer(strategy="session_id")
    picks = {}
    for i in range(400):
        scores = s.score(CycleState(), _req(**{"x-session-id": f"s{i}"}), eps)
        assert sorted(scores) == [0.0, 0.0, 0.0, 1.0]
        picks[i] = eps[scores.index(1.0)].key
        again = s.score(CycleState(), _req(**{"x-session-id": f"s{i}"}), list(reversed(eps)))
        assert list(reversed(eps))[again.index(1.0)].key == picks[i]  # order does not matter
    counts = [sum(p == ep.key for p in picks.values()) for ep in eps]
    assert min(counts) >= 60  # about 100 each
    gone = eps[1]
    rest = [e for e in eps if e is not gone]
    for i in range(400):
        scores = s.score(CycleState(), _req(**{"x-session-id": f"s{i}"}), rest)
        now = rest[scores.index(1.0)].key
        if picks[i] != gone.key:
            assert now == picks[i]  # sessions of the other pods stay
    result = SchedulingResult({"default": ProfileRunResult([eps[0]])}, "default")
    s.pre_request(CycleState(), _req(), result)
    assert result.response_headers == {}  # nothing to hand back to the client


def test_session_id_sources_in_order_and_saturation() -> None:
    eps = pool(3)
    s = _scorer(strategy="session_id", session_id_config={"sources": [{"header": "x-conv"}, {"header": "x-user"}],
                                                          "evictionTtlSeconds": 300})
    a = s.score(CycleState(), _req(**{"x-user": "alice"}), eps)
    b = s.score(CycleState(), _req(**{"x-conv": "alice", "x-user": "bob"}), eps)
    assert a == b and 1.0 in a
    eps[a.index(1.0)].metrics.waiting_queue_size = 50
    assert s.score(CycleState(), _req(**{"x-user": "alice"}), eps) == [0.0, 0.0, 0.0]


CONFIG = """
plugins:
- type: session-affinity-scorer
  name: affinity
  parameters: {params}
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: affinity
    weight: 100
  - pluginRef: queue-scorer
"""


def test_loads_from_config_with_llm_d_parameters() -> None:
    ctx = PluginContext(Datastore())
    params = ('{strategy: session_id, sessionIdConfig: {sources: [{header: x-session-id}], '
              'evictionTtlSeconds: 300, evictionSweepSeconds: 10}}')
    cfg = parse_scheduler_config(CONFIG.format(params=params), ctx, "epp.yaml")
    plugin = cfg.plugins["affinity"]
    assert isinstance(plugin, SessionAffinityScorer) and plugin.hashed
    assert plugin in cfg.scheduler.pre_request_plugins  # type: ignore[attr-defined]


@pytest.mark.parametrize("params, message", [
    ("{strategy: sticky}", "parameter 'strategy' must be one of ['encoded_endpoint_header', 'session_id']"),
    ("{encodedEndpointHeaderConfig: {header: ''}}", "encodedEndpointHeaderConfig.header must be a header name"),
    ("{sessionIdConfig: {sources: [{attribute: agent-identity}]}}", "request attributes are not supported"),
    ("{sessionIdConfig: {evictionTtlSeconds: 0}}", "evictionTtlSeconds must be a number > 0"),
    ("{queueDepthThreshold: 0}", "queueDepthThreshold must be >= 1"),
    ("{kvCacheUtilThreshold: 1.5}", "kvCacheUtilThreshold must be in (0, 1]"),
    ("{sessionIdConfig: {ttl: 1}}", "sessionIdConfig: unknown field(s) ['ttl']"),
])
def test_bad_parameters_fail_at_load_naming_file_and_plugin(params: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_scheduler_config(CONFIG.format(params=params), PluginContext(Datastore()), "epp.yaml")
    assert "epp.yaml: plugin 'affinity' (session-affinity-scorer)" in str(e.value)
    assert message in str(e.value)
