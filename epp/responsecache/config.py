"""The response-cache config file (`epp serve --response-cache FILE`).

    apiVersion: epp.llm-d.ai/v1alpha1
    kind: ResponseCacheConfig
    storage:                       # absent: an in-memory LRU per EPP process
      redis: redis://127.0.0.1:6379/0
      keyPrefix: "epp:rc:"
      timeoutMs: 50                # per Redis call; a slower or failing Redis counts as a miss
      retryAfterMs: 1000           # after a Redis error, go straight to the pods this long
    memory: {maxBytes: 67108864}   # the LRU's size cap (all entries)
    defaults: {ttlSeconds: 300, maxEntryBytes: 1048576, deterministic: true, optIn: true}
    rules:                         # first match wins; a request no rule matches is not cached
    - {model: meta-llama/Llama-3.1-8B-Instruct, ttlSeconds: 600}
    - {objective: faq-bot}
    - {model: "*", deterministic: false, optIn: true}

A rule matches on `model` (the client's model name or the target model after a rewrite; "*"
any) and/or `objective` (the `x-llm-d-inference-objective` header or its alias). `deterministic: true`
caches requests with temperature 0 or a seed; `optIn: true` caches requests whose
`cache-control` header carries `max-age=N` (N > 0, which also caps the TTL). Errors name the
file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

API_VERSION = "epp.llm-d.ai/v1alpha1"
KIND = "ResponseCacheConfig"


class CacheConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class CacheRule:
    model: str = ""  # "" = any model when `objective` is given; "*" = any
    objective: str = ""
    ttl_s: int = 300
    max_entry_bytes: int = 1 << 20
    deterministic: bool = True
    opt_in: bool = True

    def matches(self, model: str, target_model: str, objective: str) -> bool:
        if self.objective and self.objective != objective:
            return False
        return not self.model or self.model == "*" or self.model in (model, target_model)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    redis: str = ""  # "" = in memory
    key_prefix: str = "epp:rc:"
    timeout_ms: int = 50
    retry_after_ms: int = 1000
    memory_max_bytes: int = 64 << 20


@dataclass(frozen=True, slots=True)
class ResponseCacheConfig:
    rules: tuple[CacheRule, ...] = ()
    storage: StorageConfig = field(default_factory=StorageConfig)
    source: str = "<inline>"

    def rule_for(self, model: str, target_model: str, objective: str) -> CacheRule | None:
        for rule in self.rules:
            if rule.matches(model, target_model, objective):
                return rule
        return None


_TOP = ("apiVersion", "kind", "storage", "memory", "defaults", "rules")
_STORAGE = {"redis": "redis", "keyPrefix": "key_prefix", "timeoutMs": "timeout_ms",
            "retryAfterMs": "retry_after_ms"}
_RULE = {"model": "model", "objective": "objective", "ttlSeconds": "ttl_s",
         "maxEntryBytes": "max_entry_bytes", "deterministic": "deterministic", "optIn": "opt_in"}
_DEFAULTS = {k: v for k, v in _RULE.items() if k not in ("model", "objective")}


def load_cache_config(path: Path, redis_url: str | None = None) -> ResponseCacheConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise CacheConfigError(f"{path}: cannot read the response-cache config: {e}") from None
    except yaml.YAMLError as e:
        raise CacheConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_cache_config(raw, str(path), redis_url)


def parse_cache_config(raw: Any, source: str = "<inline>", redis_url: str | None = None) -> ResponseCacheConfig:
    """Validate a parsed config; `redis_url` (the --response-cache-redis flag) wins over the file."""
    if not isinstance(raw, dict):
        raise CacheConfigError(f"{source}: the response-cache config must be a mapping")
    _unknown(raw, _TOP, source, "")
    if raw.get("apiVersion", API_VERSION) != API_VERSION:
        raise CacheConfigError(f"{source}: apiVersion must be {API_VERSION}, got {raw.get('apiVersion')!r}")
    if raw.get("kind", KIND) != KIND:
        raise CacheConfigError(f"{source}: kind must be {KIND}, got {raw.get('kind')!r}")
    storage_raw = _mapping(raw.get("storage", {}), source, "storage")
    _unknown(storage_raw, tuple(_STORAGE), source, "storage.")
    memory_raw = _mapping(raw.get("memory", {}), source, "memory")
    _unknown(memory_raw, ("maxBytes",), source, "memory.")
    skw: dict[str, Any] = {}
    for key, attr in _STORAGE.items():
        if key in storage_raw:
            skw[attr] = _typed(storage_raw[key], str if key in ("redis", "keyPrefix") else int,
                               source, f"storage.{key}")
    if "maxBytes" in memory_raw:
        skw["memory_max_bytes"] = _typed(memory_raw["maxBytes"], int, source, "memory.maxBytes")
    if redis_url is not None:
        skw["redis"] = redis_url
    storage = StorageConfig(**skw)
    for attr in ("timeout_ms", "retry_after_ms", "memory_max_bytes"):
        if getattr(storage, attr) <= 0:
            raise CacheConfigError(f"{source}: storage/memory field {attr} must be > 0")
    if storage.redis and not storage.redis.startswith(("redis://", "rediss://", "unix://")):
        raise CacheConfigError(f"{source}: storage.redis must be a redis:// URL, got {storage.redis!r}")

    defaults_raw = _mapping(raw.get("defaults", {}), source, "defaults")
    _unknown(defaults_raw, tuple(_DEFAULTS), source, "defaults.")
    base = _rule_kwargs(defaults_raw, source, "defaults", _DEFAULTS)
    rules_raw = raw.get("rules", [])
    if not isinstance(rules_raw, list):
        raise CacheConfigError(f"{source}: rules must be a list")
    rules: list[CacheRule] = []
    for i, item in enumerate(rules_raw):
        where = f"rules[{i}]"
        item = _mapping(item, source, where)
        _unknown(item, tuple(_RULE), source, f"{where}.")
        kw = {**base, **_rule_kwargs(item, source, where, _RULE)}
        if not kw.get("model") and not kw.get("objective"):
            raise CacheConfigError(f"{source}: {where} needs a model (\"*\" for any) or an objective")
        rule = CacheRule(**kw)
        if rule.ttl_s <= 0 or rule.max_entry_bytes <= 0:
            raise CacheConfigError(f"{source}: {where}: ttlSeconds and maxEntryBytes must be > 0")
        if not (rule.deterministic or rule.opt_in):
            raise CacheConfigError(f"{source}: {where}: deterministic and optIn are both false: "
                                   "nothing would be cached")
        rules.append(rule)
    return ResponseCacheConfig(tuple(rules), storage, source)


def _rule_kwargs(raw: dict[str, Any], source: str, where: str, names: dict[str, str]) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for key, attr in names.items():
        if key not in raw:
            continue
        kind: type = bool if key in ("deterministic", "optIn") else str if key in ("model", "objective") else int
        kw[attr] = _typed(raw[key], kind, source, f"{where}.{key}")
    return kw


def _typed(value: Any, kind: type, source: str, where: str) -> Any:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise CacheConfigError(f"{source}: {where} must be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise CacheConfigError(f"{source}: {where} must be a {kind.__name__}, got {value!r}")
    return value


def _mapping(value: Any, source: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CacheConfigError(f"{source}: {where} must be a mapping")
    return value


def _unknown(raw: dict[str, Any], allowed: tuple[str, ...], source: str, prefix: str) -> None:
    for key in raw:
        if key not in allowed:
            raise CacheConfigError(f"{source}: unknown field {prefix}{key} (allowed: {', '.join(allowed)})")
