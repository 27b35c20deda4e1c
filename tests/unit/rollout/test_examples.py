"""The shipped examples load: the rollout EPP config (scheduler + policy) and the rewrite."""

from __future__ import annotations

from pathlib import Path

import yaml

from epp.config.loader import load_scheduler_config
from epp.datastore.datastore import Datastore
from epp.rollout.api import rewrites_from_documents
from epp.rollout.config import parse_rollout_policy
from epp.scheduling.plugins.session_affinity_scorer import SessionAffinityScorer
from epp.scheduling.registry import PluginContext

LOCAL = Path(__file__).resolve().parents[3] / "deploy" / "local"


def test_rollout_examples_load() -> None:
    cfg = load_scheduler_config(LOCAL / "epp-config-rollouts.yaml", PluginContext(Datastore()))
    policy = parse_rollout_policy(cfg.extra_sections["rollouts"], cfg.source)
    assert policy.sticky_headers == ("x-user-id", "x-gateway-inference-tenant")
    assert policy.rewrites["llama-canary"].stable_model == "meta-llama/Llama-3.1-8B-Instruct"
    assert isinstance(cfg.plugins["session-token"], SessionAffinityScorer)
    assert cfg.plugins["session-hash"].hashed
    docs = list(yaml.safe_load_all((LOCAL / "rollouts.yaml").read_text()))
    (rewrite,) = rewrites_from_documents(docs, "rollouts.yaml: ", "vllm-llama3-8b-instruct")
    assert rewrite.rules[0].weights() == (("meta-llama/Llama-3.1-8B-Instruct", 90.0), ("tweet-summary", 10.0))
