"""epp tune: search dimensions, config edits, and finding the known-better weight."""

from __future__ import annotations

import re

import pytest
import yaml

from epp.config.loader import parse_scheduler_config
from epp.datastore import Datastore
from epp.replay.profile import SimProfile
from epp.replay.tune import SearchError, apply, parse_dimension, tune, winning_config
from epp.scheduling.registry import PluginContext

from .conftest import PREFIX_CONFIG, shared_prefix_trace


def test_dimension_specs() -> None:
    d = parse_dimension("queue-scorer.weight=1..4")
    assert (d.profile, d.plugin, d.field, d.values) == (None, "queue-scorer", "weight", (1, 2, 3, 4))
    assert parse_dimension("decode/kv.weight=0..1:0.25").values == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert parse_dimension("decode/kv.weight=0..1:0.25").profile == "decode"
    assert parse_dimension("prefix-cache-scorer.autoTune=true,false").values == (True, False)
    for bad in ("queue-scorer=1..4", "queue-scorer.weight", "x.weight=4..1", "x.weight=a..b", "x.weight=1..2:0"):
        with pytest.raises(SearchError):
            parse_dimension(bad)


def test_apply_sets_weights_and_parameters_and_names_what_is_missing() -> None:
    base = yaml.safe_load(PREFIX_CONFIG)
    doc = apply(base, [(parse_dimension("queue-scorer.weight=5"), 5),
                       (parse_dimension("prefix-cache-scorer.blockSize=128"), 128)], "base.yaml")
    refs = {r["pluginRef"]: r.get("weight") for r in doc["schedulingProfiles"][0]["plugins"]}
    assert refs["queue-scorer"] == 5
    assert doc["plugins"][0]["parameters"] == {"blockSize": 128}
    assert base["plugins"][0].get("parameters") is None  # the base is not modified
    with pytest.raises(SearchError, match=re.escape("base.yaml: nope.weight: no pluginRef 'nope'")):
        apply(base, [(parse_dimension("nope.weight=1"), 1)], "base.yaml")
    with pytest.raises(SearchError, match="no plugin named 'nope'"):
        apply(base, [(parse_dimension("nope.x=1"), 1)], "base.yaml")


def test_tune_finds_the_known_better_prefix_weight() -> None:
    # Each pod's KV cache holds only a few of the 12 system prompts: without prefix affinity
    # (the base config's weight 0) the caches thrash and every prompt is prefilled again.
    trace = shared_prefix_trace()
    profile = SimProfile.parse({"num_gpu_blocks": 400})
    outcome = tune(trace, PREFIX_CONFIG, "base.yaml", [parse_dimension("prefix-cache-scorer.weight=0..3")],
                   objective="ttft-mean", budget_s=60, profile=profile)
    base, best = outcome.baseline, outcome.best
    assert base is not None and best is not None and base.result is not None and best.result is not None
    assert len(outcome.trials) == 4  # base (weight 0) + weights 1, 2, 3
    assert dict(best.settings)["prefix-cache-scorer.weight"] >= 1
    assert best.score < 0.5 * base.score
    assert best.result.hit_rate > base.result.hit_rate + 0.3
    text = winning_config(outcome, "epp tune ...")
    cfg = parse_scheduler_config(text, PluginContext(Datastore()), "best.yaml")
    weights = {scorer.name: weight for scorer, weight in cfg.profiles["default"].scorers}
    assert weights["prefix-cache-scorer"] == dict(best.settings)["prefix-cache-scorer.weight"]


def test_budget_stops_the_search_and_bad_values_are_reported_per_trial() -> None:
    trace = shared_prefix_trace(requests=30)
    cut = tune(trace, PREFIX_CONFIG, "base.yaml", [parse_dimension("queue-scorer.weight=1..50")], budget_s=1e-6)
    assert len(cut.trials) == 1 and cut.order == "grid (cut by the budget)"
    bad = tune(trace, PREFIX_CONFIG, "base.yaml", [parse_dimension("prefix-cache-scorer.blockSize=-1")],
               budget_s=60)
    failed = [t for t in bad.trials if t.result is None]
    assert len(failed) == 1 and "blockSize" in failed[0].error
    assert bad.best is bad.baseline
