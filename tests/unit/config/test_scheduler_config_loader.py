from pathlib import Path
from typing import Any

import pytest

from epp.config.loader import (
    ConfigError,
    default_config_text,
    load_scheduler_config,
    parse_scheduler_config,
    reload_scheduler_config,
)
from epp.datastore.datastore import Datastore
from epp.scheduling.plugins.max_score_picker import MaxScorePicker
from epp.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer
from epp.scheduling.plugins.single_profile_handler import SingleProfileHandler
from epp.scheduling.registry import PluginContext

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"

GOOD = HEADER + """
plugins:
- type: queue-scorer
- type: prefix-cache-scorer
  name: prefix
  parameters:
    blockSize: 32
    maxPrefixBlocksToMatch: 128
    autoTune: false
- type: prefix-cache-scorer
  name: prefix-coarse
  parameters: {blockSize: 256, auto_tune: false}
- type: low-queue-filter
  parameters: {threshold: 10}
- type: weighted-random-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: low-queue-filter
  - pluginRef: queue-scorer
  - pluginRef: prefix
    weight: 3
  - pluginRef: prefix-coarse
    weight: 0.5
  - pluginRef: weighted-random-picker
"""


def _ctx() -> PluginContext:
    return PluginContext(datastore=Datastore())


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_scheduler_config(text, _ctx(), "sched.yaml")
    return str(info.value)


def test_good_config_wires_profiles_plugins_and_defaults() -> None:
    cfg = parse_scheduler_config(GOOD, _ctx(), "sched.yaml")
    profile = cfg.profiles["default"]
    assert [f.name for f in profile.filters] == ["low-queue-filter"]
    assert [(s.name, w) for s, w in profile.scorers] == [
        ("queue-scorer", 1.0), ("prefix", 3.0), ("prefix-coarse", 0.5)
    ]
    assert profile.picker is cfg.plugins["weighted-random-picker"]
    # Same type twice, with its own parameters each.
    assert cfg.plugins["prefix"].params.block_size == 32
    assert cfg.plugins["prefix-coarse"].params.block_size == 256
    # No handler configured -> single-profile-handler; prefix scorers are PreRequest hooks.
    assert isinstance(cfg.scheduler.profile_handler, SingleProfileHandler)
    assert [p.name for p in cfg.scheduler.pre_request_plugins] == ["prefix", "prefix-coarse"]


def test_default_config_loads_from_none_and_reads_the_inflight_ledger() -> None:
    cfg = load_scheduler_config(None, _ctx())
    assert cfg.source == "default-config.yaml"
    profile = cfg.profiles["default"]
    assert [(s.type_name, w) for s, w in profile.scorers] == [
        ("prefill-load-scorer", 2.0), ("active-request-scorer", 1.0), ("prefix-cache-scorer", 30.0),
    ]
    assert cfg.plugins["prefix-cache-scorer"].params.balance_abs_threshold > 0
    assert cfg.plugins["prefill-load-scorer"].params.speed_aware  # a slow pod gets fewer prompts
    assert isinstance(profile.picker, MaxScorePicker)
    assert "EndpointPickerConfig" in default_config_text()


def test_gie_default_is_embedded_and_named_by_bare_file_name(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no gie-default.yaml here: the embedded one is read
    cfg = load_scheduler_config("gie-default.yaml", _ctx())
    profile = cfg.profiles["default"]
    # GIE's Helm chart default-plugins.yaml: queue 2, KV-cache utilization 2, prefix 3.
    assert [(s.type_name, w) for s, w in profile.scorers] == [
        ("queue-scorer", 2.0), ("kv-cache-utilization-scorer", 2.0), ("prefix-cache-scorer", 3.0)
    ]
    prefix = cfg.plugins["prefix-cache-scorer"].params
    assert (prefix.block_size, prefix.max_prefix_blocks_to_match, prefix.lru_capacity_per_server) == (64, 256, 31250)
    assert prefix.balance_abs_threshold == 0 and prefix.cache_threshold == 0.0  # GIE has no let-go
    assert isinstance(profile.picker, MaxScorePicker)


def test_missing_config_names_the_embedded_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read.*embedded configs: default-config\.yaml, "
                                          r"gie-default\.yaml"):
        load_scheduler_config(tmp_path / "nope.yaml", _ctx())


def test_no_profiles_means_one_default_profile_with_everything_and_max_score_picker() -> None:
    cfg = parse_scheduler_config(
        HEADER + "plugins:\n- type: queue-scorer\n- type: subset-filter\n", _ctx(), "s.yaml"
    )
    assert list(cfg.profiles) == ["default"]
    profile = cfg.profiles["default"]
    assert [f.name for f in profile.filters] == ["subset-filter"]
    assert [(s.name, w) for s, w in profile.scorers] == [("queue-scorer", 1.0)]
    assert isinstance(profile.picker, MaxScorePicker)


def test_load_from_file_and_reload_keeps_unchanged_stateful_plugins(tmp_path: Path) -> None:
    path = tmp_path / "sched.yaml"
    path.write_text(GOOD)
    ctx = _ctx()
    first = load_scheduler_config(path, ctx)
    path.write_text(GOOD.replace("blockSize: 256", "blockSize: 512"))
    second = reload_scheduler_config(path, ctx, first)
    assert second.plugins["prefix"] is first.plugins["prefix"]  # unchanged: LRU kept
    assert second.plugins["prefix-coarse"] is not first.plugins["prefix-coarse"]
    assert isinstance(second.plugins["prefix-coarse"], PrefixCacheScorer)


def test_reload_of_a_broken_file_raises_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "sched.yaml"
    path.write_text(GOOD)
    ctx = _ctx()
    first = load_scheduler_config(path, ctx)
    path.write_text(GOOD.replace("type: queue-scorer", "type: queue-scorrer"))
    with pytest.raises(ConfigError, match=r"sched\.yaml: plugin 'queue-scorrer'"):
        reload_scheduler_config(path, ctx, first)


def test_missing_file_is_named() -> None:
    with pytest.raises(ConfigError, match=r"/nonexistent/s\.yaml: cannot read"):
        load_scheduler_config("/nonexistent/s.yaml", _ctx())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            HEADER + "plugins:\n- type: prefix-cache-scorer\n  name: prefix\n"
            "  parameters: {blockSize: '64'}\n",
            "sched.yaml: plugin 'prefix' (prefix-cache-scorer): parameter 'blockSize' must be an integer",
        ),
        (
            HEADER + "plugins:\n- type: prefix-cache-scorer\n  name: prefix\n"
            "  parameters: {blokSize: 64}\n",
            "sched.yaml: plugin 'prefix' (prefix-cache-scorer): unknown parameter 'blokSize' "
            "(known: autoTune, balanceAbsThreshold, balanceRelThreshold, blockSize, cacheThreshold, "
            "lruCapacityPerServer, maxPrefixBlocksToMatch)",
        ),
        (
            HEADER + "plugins:\n- type: fancy-scorer\n  name: f\n",
            "sched.yaml: plugin 'f' (fancy-scorer): unknown plugin type 'fancy-scorer' (known: ",
        ),
        (
            HEADER + "plugins:\n- type: queue-scorer\n- type: queue-scorer\n",
            "sched.yaml: plugin 'queue-scorer' (queue-scorer): duplicate plugin name 'queue-scorer'",
        ),
        (
            HEADER + "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n  plugins:\n"
            "  - pluginRef: queue\n",
            "sched.yaml: scheduling profile 'd': plugins[0]: pluginRef 'queue' names no plugin "
            "(defined: queue-scorer)",
        ),
        (
            HEADER + "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n  plugins:\n"
            "  - pluginRef: queue-scorer\n    weight: -1\n",
            "sched.yaml: scheduling profile 'd': plugin 'queue-scorer' (queue-scorer): "
            "field 'weight' must be >= 0, got -1",
        ),
        (
            HEADER + "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n  plugins:\n"
            "  - pluginRef: queue-scorer\n    weight: heavy\n",
            "sched.yaml: scheduling profile 'd': plugin 'queue-scorer' (queue-scorer): "
            "field 'weight' must be a number",
        ),
        (
            HEADER + "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n  plugins: []\n"
            "- name: d\n  plugins: []\n",
            "sched.yaml: scheduling profile 'd': duplicate profile name",
        ),
        (
            HEADER + "plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: a\n  plugins: []\n"
            "- name: b\n  plugins: []\n",
            "sched.yaml: plugin 'single-profile-handler' (single-profile-handler): needs exactly one "
            "scheduling profile, got 2 (a, b)",
        ),
        (
            HEADER + "plugins:\n- type: single-profile-handler\nschedulingProfiles:\n- name: d\n  plugins:\n"
            "  - pluginRef: single-profile-handler\n",
            "sched.yaml: scheduling profile 'd': plugin 'single-profile-handler' (single-profile-handler): "
            "not a filter, scorer or picker",
        ),
        (
            HEADER + "plugins:\n- type: max-score-picker\n- type: random-picker\n",
            "sched.yaml: scheduling profile 'default': more than one picker "
            "(max-score-picker, random-picker)",
        ),
        (
            HEADER + "plugins:\n- type: max-score-picker\n  parameters: {maxNumOfEndpoints: 0}\n",
            "sched.yaml: plugin 'max-score-picker' (max-score-picker): "
            "parameter 'maxNumOfEndpoints' must be >= 1, got 0",
        ),
        (
            HEADER + "plugins:\n- name: x\n",
            "sched.yaml: plugins[0]: field 'type' is required",
        ),
        (
            HEADER + "plugins:\n- type: queue-scorer\n  parameter: {}\n",
            "sched.yaml: plugin 'queue-scorer' (queue-scorer): unknown field 'parameter' "
            "(allowed: type, name, parameters)",
        ),
        ("apiVersion: v1\nkind: EndpointPickerConfig\n", "sched.yaml: field 'apiVersion' must be one of"),
        (
            HEADER.replace("EndpointPickerConfig", "ConfigMap"),
            "sched.yaml: field 'kind' must be 'EndpointPickerConfig'",
        ),
        (HEADER + "plugin: []\n", "sched.yaml: unknown field 'plugin'"),
        (HEADER + "plugins: {type: queue-scorer}\n", "sched.yaml: field 'plugins' must be a list"),
        ("plugins: [\n", "sched.yaml: not valid YAML"),
        ("- just a list\n", "sched.yaml: the config must be a mapping, got list"),
    ],
)
def test_errors_name_file_plugin_and_field(text: str, message: str) -> None:
    assert message in _error(text)


def test_unknown_type_lists_the_known_ones() -> None:
    message = _error(HEADER + "plugins:\n- type: fancy-scorer\n")
    for known in ("queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer", "max-score-picker",
                  "running-requests-size-scorer", "single-profile-handler"):
        assert known in message


def test_other_sections_are_accepted_and_kept() -> None:
    cfg = parse_scheduler_config(
        HEADER + "featureGates: [flowControl]\nplugins:\n- type: queue-scorer\n", _ctx(), "s.yaml"
    )
    assert cfg.extra_sections == {"featureGates": ["flowControl"]}
