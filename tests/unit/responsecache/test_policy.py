"""Cacheability and the cache key."""

from __future__ import annotations

import json
from typing import Any

import pytest

from epp.responsecache.config import CacheRule, ResponseCacheConfig
from epp.responsecache.policy import (
    BAD_BODY,
    NO_RULE,
    NO_STORE,
    NOT_DETERMINISTIC,
    CachePlan,
    cache_key,
    parse_cache_control,
    plan_request,
)

CFG = ResponseCacheConfig(rules=(CacheRule(model="llama", ttl_s=300),))
PATH = "/v1/chat/completions"


def _plan(body: dict[str, Any], headers: dict[str, str] | None = None, cfg: ResponseCacheConfig = CFG,
          model: str = "llama") -> CachePlan | str:
    return plan_request(cfg, model, model, PATH, json.dumps(body).encode(), headers or {})


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "llama", "messages": [{"role": "user", "content": "hi"}], **extra}


def test_deterministic_requests_are_cacheable() -> None:
    for body in (_chat(temperature=0), _chat(temperature=0.0), _chat(seed=7, temperature=0.9)):
        plan = _plan(body)
        assert isinstance(plan, CachePlan) and plan.ttl_s == 300 and plan.lookup
    assert _plan(_chat()) == NOT_DETERMINISTIC  # default temperature samples
    assert _plan(_chat(temperature=0.5)) == NOT_DETERMINISTIC
    assert _plan(_chat(temperature=False)) == NOT_DETERMINISTIC  # a bool is not a temperature
    assert _plan(_chat(seed="7")) == NOT_DETERMINISTIC


def test_cache_control_opt_in_no_store_no_cache() -> None:
    plan = _plan(_chat(temperature=0.7), {"cache-control": "max-age=60"})
    assert isinstance(plan, CachePlan) and plan.ttl_s == 60  # max-age caps the TTL
    plan = _plan(_chat(temperature=0), {"cache-control": "max-age=9999"})
    assert isinstance(plan, CachePlan) and plan.ttl_s == 300
    no_opt_in = ResponseCacheConfig(rules=(CacheRule(model="*", opt_in=False),))
    assert _plan(_chat(temperature=0.7), {"cache-control": "max-age=60"}, no_opt_in) == NOT_DETERMINISTIC
    assert _plan(_chat(temperature=0), {"cache-control": "no-store"}) == NO_STORE
    assert _plan(_chat(temperature=0), {"cache-control": "max-age=5, No-Store"}) == NO_STORE
    for value in ("no-cache", "max-age=0"):
        plan = _plan(_chat(temperature=0), {"cache-control": value})
        assert isinstance(plan, CachePlan) and not plan.lookup  # fill only
    assert parse_cache_control('max-age="30", private') .max_age == 30


def test_rules_and_bad_bodies() -> None:
    assert _plan(_chat(temperature=0), model="other") == NO_RULE
    assert plan_request(CFG, "llama", "llama", PATH, b"[1]", {}) == BAD_BODY
    assert plan_request(CFG, "llama", "llama", PATH, b"{nope", {}) == BAD_BODY


def _key(body: dict[str, Any], tenant: str = "t", model: str = "llama", path: str = PATH) -> str:
    return cache_key(tenant, path, model, body)


def test_key_separates_everything_that_changes_the_answer() -> None:
    base = _chat(temperature=0, max_tokens=16)
    k = _key(base)
    assert len(k) == 64
    differing = [
        _key(base, tenant="u"),  # tenant
        _key(base, model="llama-lora-sql"),  # model after rewrite / LoRA adapter name
        _key(base, path="/v1/completions"),
        _key({**base, "messages": [{"role": "user", "content": "hi!"}]}),
        _key({**base, "messages": [{"role": "system", "content": "hi"}]}),
        _key({**base, "max_tokens": 17}),
        _key({**base, "top_p": 0.5}),
        _key({**base, "stop": ["\n"]}),
        _key({**base, "seed": 1}),
        _key({**base, "stream": True}),
        _key({**base, "logprobs": True}),
        _key({**base, "some_new_sampling_param": 1}),  # unknown fields are in the key
        _key({**base, "lora_request": {"lora_name": "sql"}}),
        _key({"model": "llama", "prompt": "hi", "temperature": 0, "max_tokens": 16}),
    ]
    assert k not in differing and len(set(differing)) == len(differing)


def test_key_ignores_what_cannot_change_the_answer() -> None:
    base = _chat(temperature=0, max_tokens=16)
    k = _key(base)
    # The client's model alias (the key uses the target), user, metadata, key order, JSON spacing.
    assert _key({**base, "model": "alias", "user": "bob", "metadata": {"a": 1}}) == k
    assert _key(dict(reversed(list(base.items())))) == k
    # Message normalisation: text parts joined, null fields dropped, key order.
    parts = [{"content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}], "role": "user",
              "name": None}]
    assert _key({**base, "messages": parts}) == k


def test_key_keeps_non_text_content_parts() -> None:
    base = _chat(temperature=0)
    image = [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                          {"type": "image_url", "image_url": {"url": "x"}}]}]
    assert _key({**base, "messages": image}) != _key(base)


@pytest.mark.parametrize("value", ["", "public", "max-age=abc", "max-age"])
def test_cache_control_without_directives_we_use(value: str) -> None:
    cc = parse_cache_control(value)
    assert not cc.no_store and not cc.no_cache and cc.max_age is None
