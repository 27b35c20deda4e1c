"""`epp run-local --rollouts`: the stack config it builds."""

from __future__ import annotations

from pathlib import Path

import yaml

from epp.localstack.cli import _with_rollouts
from epp.localstack.stack import REPO, StackConfig
from epp.rollout.api import rewrites_from_documents


def test_rollouts_option_combines_objectives_and_the_canary(tmp_path: Path) -> None:
    cfg = StackConfig(run_dir=tmp_path / "run")
    _with_rollouts(cfg)
    assert cfg.objectives == tmp_path / "run" / "objectives-rollouts.yaml"
    docs = list(yaml.safe_load_all(cfg.objectives.read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds.count("InferenceObjective") == 2 and kinds.count("InferenceModelRewrite") == 1
    assert rewrites_from_documents(docs, "", "vllm-llama3-8b-instruct")[0].name == "llama-canary"
    assert cfg.epp_config == REPO / "deploy/local/epp-config-rollouts.yaml"
    assert cfg.response_header_mode == "SEND"
