"""Which requests may be cached, and the cache key.

Cacheable: a config rule matches the model or objective, and either the request is
deterministic (temperature 0, or a seed: with every sampling parameter in the key the same
seed gives the same answer) or the client opted in with `cache-control: max-age=N`. The
request's `cache-control: no-store` turns the cache off for it (no lookup, no fill);
`no-cache` (and `max-age=0`) skips the lookup but stores the fresh answer.

The key is a SHA-256 of: the tenant (the API key's tenant, which the EPP writes into the
fairness-ID header, or the client's fairness ID when no keys are configured), the API path,
the model after any rewrite (with vLLM a LoRA adapter is addressed by this name), the
normalised messages or prompt, and every other body field except the few that cannot change
the output (NON_OUTPUT_FIELDS): sampling parameters, `stream`, `stream_options`, tools, a LoRA
or adapter field of an engine extension, all of them. Unknown fields are in the key, so a new
sampling parameter can never make two different requests share an answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec

from epp.headers import FAIRNESS_ID, OBJECTIVE
from epp.responsecache.config import CacheRule, ResponseCacheConfig

# Fields that change neither the tokens nor the shape of the answer.
NON_OUTPUT_FIELDS = frozenset({"model", "messages", "prompt", "user", "metadata", "store", "request_id",
                               "priority", "service_tier"})

# Skip reasons (the `reason` label of epp_response_cache_skipped_total).
NO_RULE = "no_rule"
NOT_DETERMINISTIC = "not_deterministic"
NO_STORE = "no_store"
BAD_BODY = "bad_body"


@dataclass(frozen=True, slots=True)
class CacheControl:
    no_store: bool = False
    no_cache: bool = False
    max_age: int | None = None


def parse_cache_control(value: str) -> CacheControl:
    """The request directives we honour (RFC 9111 5.2.1); unknown directives are ignored."""
    no_store = no_cache = False
    max_age: int | None = None
    for part in value.split(","):
        name, _, arg = part.strip().partition("=")
        name = name.strip().lower()
        if name == "no-store":
            no_store = True
        elif name == "no-cache":
            no_cache = True
        elif name == "max-age":
            arg = arg.strip().strip('"')
            if arg.isdigit():
                max_age = int(arg)
    return CacheControl(no_store, no_cache, max_age)


@dataclass(slots=True)
class CachePlan:
    """One cacheable request: where its answer lives and what to do with it."""

    key: str
    model: str  # target model, the metrics label
    stream: bool
    ttl_s: int
    max_entry_bytes: int
    lookup: bool  # False with cache-control: no-cache / max-age=0 (fill only)


def plan_request(cfg: ResponseCacheConfig, model: str, target_model: str, path: str, body: bytes,
                 headers: dict[str, str]) -> CachePlan | str:
    """A CachePlan, or the reason the request is not cached."""
    cc = parse_cache_control(headers.get("cache-control", ""))
    if cc.no_store:
        return NO_STORE
    rule = cfg.rule_for(model, target_model, headers.get(OBJECTIVE, ""))
    if rule is None:
        return NO_RULE
    try:
        obj = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return BAD_BODY
    if not isinstance(obj, dict):
        return BAD_BODY
    ttl = _ttl(rule, obj, cc)
    if ttl is None:
        return NOT_DETERMINISTIC
    stream = obj.get("stream") is True
    return CachePlan(key=cache_key(headers.get(FAIRNESS_ID, ""), path, target_model, obj),
                     model=target_model, stream=stream, ttl_s=ttl, max_entry_bytes=rule.max_entry_bytes,
                     lookup=not cc.no_cache and cc.max_age != 0)


def _ttl(rule: CacheRule, obj: dict[str, Any], cc: CacheControl) -> int | None:
    if rule.opt_in and cc.max_age is not None and cc.max_age > 0:
        return min(rule.ttl_s, cc.max_age)
    if rule.deterministic and is_deterministic(obj):
        return rule.ttl_s if cc.max_age is None or cc.max_age == 0 else min(rule.ttl_s, cc.max_age)
    return None


def is_deterministic(obj: dict[str, Any]) -> bool:
    temperature = obj.get("temperature")
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature == 0:
        return True
    seed = obj.get("seed")
    return isinstance(seed, int) and not isinstance(seed, bool)


def cache_key(tenant: str, path: str, target_model: str, obj: dict[str, Any]) -> str:
    params = {k: v for k, v in obj.items() if k not in NON_OUTPUT_FIELDS}
    doc = {
        "v": 1,
        "tenant": tenant,
        "path": path.split("?", 1)[0],
        "model": target_model,
        "messages": normalise_messages(obj["messages"]) if "messages" in obj else None,
        "prompt": obj.get("prompt"),
        "params": params,
    }
    return hashlib.sha256(msgspec.json.encode(doc, order="sorted")).hexdigest()


def normalise_messages(messages: Any) -> Any:
    """Messages in one canonical form: null fields dropped, a content list made only of text
    parts joined into one string (the same prompt either way), key order irrelevant (the
    encoder sorts keys)."""
    if not isinstance(messages, list):
        return messages
    out: list[Any] = []
    for m in messages:
        if not isinstance(m, dict):
            out.append(m)
            continue
        norm = {k: v for k, v in m.items() if v is not None}
        content = norm.get("content")
        if isinstance(content, list) and all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                and len(p) == 2 for p in content):
            norm["content"] = "".join(p["text"] for p in content)
        out.append(norm)
    return out
