"""deploy/vllm/pd/epp-config-pd.yaml loads and drives P/D decisions with the real plugins."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from epp.config.loader import load_scheduler_config, parse_scheduler_config
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import ROLE_LABEL, Endpoint
from epp.scheduling.plugins.pd_metrics import register_pd_metrics
from epp.scheduling.registry import ConfigError, PluginContext
from epp.scheduling.types import LLMRequest

CONFIG = Path(__file__).resolve().parents[4] / "deploy/vllm/pd/epp-config-pd.yaml"


def _pool() -> list[Endpoint]:
    return [
        Endpoint("prefill-0", "10.0.0.1", 8000, labels={ROLE_LABEL: "prefill"}),
        Endpoint("decode-0", "10.0.0.2", 8000, labels={ROLE_LABEL: "decode"}),
        Endpoint("decode-1", "10.0.0.3", 8000, labels={ROLE_LABEL: "decode"}),
    ]


def test_repeated_long_prompt_is_prefilled_remotely_once() -> None:
    services: dict[str, object] = {}
    registry = CollectorRegistry()
    register_pd_metrics(registry, services)
    ctx = PluginContext(datastore=Datastore(), services=services)
    scheduler = load_scheduler_config(CONFIG, ctx).scheduler
    pool = _pool()
    prompt = "You are a helpful assistant. " * 200  # ~1450 tokens at 4 chars/token
    headers, targets = [], []
    for i in range(2):
        request = LLMRequest(request_id=f"r{i}", model="m", target_model="m", prompt=prompt)
        result, state = scheduler.schedule(request, pool)
        scheduler.pre_request(state, request, result)
        assert result.primary is not None
        targets.append(result.primary.targets[0])
        headers.append(dict(result.headers))
    assert targets[0].role == "decode"
    assert headers[0] == {"x-prefiller-host-port": "10.0.0.1:8000"}
    # Second time the prefix is cached on the decode pod it went to: local prefill.
    assert targets[1] is targets[0] and headers[1] == {}
    assert registry.get_sample_value("epp_pd_prefill_skipped_total", {"reason": "below-threshold"}) == 1

    short = LLMRequest(request_id="s", model="m", target_model="m", prompt="Hi there")
    result, _ = scheduler.schedule(short, pool)
    assert result.headers == {}


def test_missing_prefill_profile_is_a_config_error() -> None:
    text = CONFIG.read_text().split("- name: prefill\n")[0]
    with pytest.raises(ConfigError, match=r"pd-profile-handler.*'prefill' not configured"):
        parse_scheduler_config(text, PluginContext(datastore=Datastore()), "pd.yaml")
