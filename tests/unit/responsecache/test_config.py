"""The response-cache config file: defaults, rule matching, and errors naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from epp.responsecache.config import CacheConfigError, load_cache_config, parse_cache_config

FULL = """
apiVersion: epp.llm-d.ai/v1alpha1
kind: ResponseCacheConfig
storage: {redis: "redis://127.0.0.1:6379/0", keyPrefix: "x:", timeoutMs: 20, retryAfterMs: 500}
memory: {maxBytes: 1000}
defaults: {ttlSeconds: 120, maxEntryBytes: 4096}
rules:
- {model: llama, ttlSeconds: 600}
- {objective: faq, optIn: false}
- {model: "*", deterministic: false}
"""


def test_full_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.yaml"
    path.write_text(FULL)
    cfg = load_cache_config(path)
    assert cfg.storage.redis == "redis://127.0.0.1:6379/0" and cfg.storage.key_prefix == "x:"
    assert (cfg.storage.timeout_ms, cfg.storage.retry_after_ms, cfg.storage.memory_max_bytes) == (20, 500, 1000)
    llama, faq, anything = cfg.rules
    assert (llama.ttl_s, llama.max_entry_bytes, llama.deterministic, llama.opt_in) == (600, 4096, True, True)
    assert (faq.ttl_s, faq.opt_in) == (120, False)
    assert not anything.deterministic and anything.opt_in
    # First match wins: the model rule, then the objective, then the wildcard.
    assert cfg.rule_for("llama", "llama", "faq") is llama
    assert cfg.rule_for("other", "llama", "") is llama  # the target model after a rewrite
    assert cfg.rule_for("other", "other", "faq") is faq
    assert cfg.rule_for("other", "other", "") is anything
    # The --response-cache-redis flag wins over the file.
    assert load_cache_config(path, "redis://10.0.0.1:1/2").storage.redis == "redis://10.0.0.1:1/2"


def test_empty_config_caches_nothing_in_memory() -> None:
    cfg = parse_cache_config({})
    assert cfg.rules == () and cfg.storage.redis == "" and cfg.rule_for("m", "m", "") is None


@pytest.mark.parametrize(("text", "message"), [
    ("rules: [{model: m, ttlSeconds: zero}]", "rules[0].ttlSeconds must be an integer"),
    ("rules: [{model: m, ttl: 3}]", "unknown field rules[0].ttl"),
    ("rules: [{ttlSeconds: 3}]", "rules[0] needs a model"),
    ("rules: [{model: m, ttlSeconds: 0}]", "must be > 0"),
    ("rules: [{model: m, deterministic: false, optIn: false}]", "nothing would be cached"),
    ("storage: {redis: 'localhost:6379'}", "storage.redis must be a redis:// URL"),
    ("storage: {timeoutMs: true}", "storage.timeoutMs must be an integer"),
    ("kind: Other", "kind must be ResponseCacheConfig"),
    ("colour: red", "unknown field colour"),
    ("rules: {model: m}", "rules must be a list"),
    ("defaults: {model: m}", "unknown field defaults.model"),
])
def test_errors_name_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CacheConfigError) as e:
        load_cache_config(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(CacheConfigError, match="cannot read"):
        load_cache_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [")
    with pytest.raises(CacheConfigError, match="not valid YAML"):
        load_cache_config(bad)
    assert yaml.safe_load(FULL)  # the docstring example shape stays valid YAML


def test_epp_serve_refuses_a_bad_cache_file_naming_it(tmp_path: Path) -> None:
    from epp.observability.metrics import EPPMetrics
    from epp.scheduling.registry import ConfigError
    from epp.server.app import ServeOptions, _response_cache

    bad = tmp_path / "cache.yaml"
    bad.write_text("rules: [{model: m, ttlSeconds: -1}]")
    with pytest.raises(ConfigError, match=str(bad)):
        _response_cache(ServeOptions(response_cache=bad), EPPMetrics())
    with pytest.raises(ConfigError, match="needs --response-cache FILE"):
        _response_cache(ServeOptions(response_cache_redis="redis://127.0.0.1:1/0"), EPPMetrics())
    assert _response_cache(ServeOptions(), EPPMetrics()) is None
    good = tmp_path / "good.yaml"
    good.write_text("rules: [{model: '*'}]")
    cache = _response_cache(ServeOptions(response_cache=good, response_cache_redis="redis://127.0.0.1:1/0"),
                            EPPMetrics())
    assert cache is not None and cache.store.name == "redis"
