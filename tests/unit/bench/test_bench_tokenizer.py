"""`epp bench --tokenizer DIR`: the pods and the precise-prefix rows use the model's tokenizer,
the other EPP rows keep their configs (epp-default stays the embedded default)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml
from tokenizers import Tokenizer as HFTokenizer

from epp.bench.cli import add_parser, build_plan, plan_settings
from epp.bench.hitrate import best_hit_rate
from epp.bench.routers import _stack_config, epp_config_path, router_by_key
from epp.bench.workloads import WorkloadParams, build
from epp.config.loader import load_scheduler_config
from epp.datastore import Datastore
from epp.scheduling.registry import PluginContext
from tests.helpers.tokenizer_fixture import llama3_dir


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


def test_without_the_option_the_simple_tokenizer_is_reported_and_nothing_changes(tmp_path: Path) -> None:
    args = parse("--run-dir", str(tmp_path))
    plan = build_plan(args)
    assert plan.row.tokenizer is None
    assert plan_settings(plan, args, None)["tokenizer"].startswith("simple")
    cfg = _stack_config(router_by_key("epp-precise"), plan.row, tmp_path / "row")
    assert cfg.epp_config == epp_config_path(router_by_key("epp-precise"))
    assert "--tokenizer" not in cfg.sim_args and cfg.tokenizer is None


def test_a_directory_without_tokenizer_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--tokenizer .*no tokenizer\.json"):
        build_plan(parse("--tokenizer", str(tmp_path)))


def test_pods_and_precise_rows_get_the_tokenizer_other_rows_keep_their_config(tmp_path: Path) -> None:
    tok = Path(llama3_dir()).resolve()
    args = parse("--tokenizer", llama3_dir(), "--run-dir", str(tmp_path))
    plan = build_plan(args)
    assert plan.row.tokenizer == tok
    assert "llama3_1 in every pod" in plan_settings(plan, args, None)["tokenizer"]

    for key in ("epp-default", "epp-prefix", "vr-rr", "envoy-rr", "epp-precise", "epp-precise-spec"):
        cfg = _stack_config(router_by_key(key), plan.row, tmp_path / key)
        # Every pod tokenizes with the model's tokenizer, passed as a simulator argument ...
        at = list(cfg.sim_args).index("--tokenizer")
        assert cfg.sim_args[at + 1] == str(tok), key
        # ... and not via StackConfig.tokenizer, which would swap epp-default's config.
        assert cfg.tokenizer is None, key
    assert _stack_config(router_by_key("epp-default"), plan.row, tmp_path / "d").epp_config is None
    prefix = router_by_key("epp-prefix")
    assert _stack_config(prefix, plan.row, tmp_path / "p").epp_config == epp_config_path(prefix)

    spec = router_by_key("epp-precise-spec")
    patched = _stack_config(spec, plan.row, tmp_path / "s").epp_config
    original = epp_config_path(spec)
    assert patched is not None and original is not None and patched.parent == tmp_path / "s"
    got, want = yaml.safe_load(patched.read_text()), yaml.safe_load(original.read_text())
    scorer = next(p for p in want["plugins"] if p["type"] == "precise-prefix-cache-scorer")
    assert scorer["parameters"]["tokenizer"] == "simple"
    scorer["parameters"]["tokenizer"] = str(tok)
    assert got == want  # only the tokenizer changed (speculative settings, weights kept)
    # The EPP's own loader accepts the patched file and loads the real tokenizer from it.
    scheduler = load_scheduler_config(patched, PluginContext(datastore=Datastore())).scheduler
    assert scheduler.profiles


def test_the_hit_rate_bound_counts_the_pods_real_token_ids() -> None:
    workload = build("shared-prefix", WorkloadParams(rate=6, count=12, duration_s=2, nonce="tok"))
    simple = best_hit_rate(workload.requests, 16)
    real = best_hit_rate(workload.requests, 16, model_tokenizer=llama3_dir())
    # The reference: the tokenizers library on the same tokenizer.json; Llama 3's chat
    # template adds special tokens, so a prompt has more ids than its plain text.
    hf = HFTokenizer.from_file(str(Path(llama3_dir()) / "tokenizer.json"))
    plain = sum(len(hf.encode(m["content"], add_special_tokens=False).ids)
                for r in workload.requests for m in r.messages)
    assert plain < real.prompt_tokens < plain + 64 * len(workload.requests)
    assert real.prompt_tokens != simple.prompt_tokens
    assert 0 < real.rate < 1
