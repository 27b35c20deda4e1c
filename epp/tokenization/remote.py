"""Tokenize by asking a vLLM pod's own /tokenize endpoint, for models whose chat template
cannot be rendered locally (custom Python-side preprocessing, templates needing a newer
transformers, no template files at the EPP).

vLLM's API (vllm/entrypoints/serve/tokenize/protocol.py):
    POST /tokenize {"prompt": str, "add_special_tokens": true}                  (completions)
    POST /tokenize {"messages": [...], "add_generation_prompt": true,
                    "continue_final_message": false, "add_special_tokens": false,
                    "tools": [...], "chat_template_kwargs": {...}}               (chat)
    -> {"count": int, "max_model_len": int, "tokens": [int, ...]}
`model` is optional in current vLLM; it is sent when configured.

The decision path is synchronous and runs on the EPP's event loop, so it never waits for the
network there: a miss starts a background fetch and is answered from the cache of what is
known so far. The cache is per conversation prefix ("per message"): besides the whole
request, the fetch also asks for the conversation without its last message and without a
generation prompt, the shared history that the next turn, or another conversation with the
same system prompt, starts with. A request whose whole conversation is not cached yet gets
the tokens of its longest cached prefix: its leading blocks still hash as on the pod; only
the tail is missing until the fetch lands. Called with no running event loop (benchmarks,
tools), a miss is fetched synchronously instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from epp.tokenization.prompt import ChatPrompt

log = logging.getLogger(__name__)

CACHE_TOKENS = 2_000_000
MAX_INFLIGHT = 16
DEFAULT_TIMEOUT_S = 2.0
_WARN_EVERY_S = 30.0


class TokenizeError(RuntimeError):
    """A pod's /tokenize failed or answered something that is not vLLM's shape."""


def _key(*parts: Any) -> bytes:
    data = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.blake2b(data.encode("utf-8"), digest_size=16).digest()


def parse_tokenize_response(doc: Any) -> list[int]:
    """`tokens` of a vLLM /tokenize answer, checked against its `count`."""
    if not isinstance(doc, dict):
        raise TokenizeError("/tokenize answered a non-object")
    tokens = doc.get("tokens")
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        raise TokenizeError("/tokenize answer has no integer list 'tokens'")
    if doc.get("count") != len(tokens):
        raise TokenizeError(f"/tokenize answer: count {doc.get('count')} != {len(tokens)} tokens")
    return tokens


class RemotePromptTokenizer:
    """PromptTokenizer backed by the pods' /tokenize, with a bounded cache."""

    def __init__(self, pods: Callable[[], Sequence[str]], *, model: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, cache_tokens: int = CACHE_TOKENS,
                 max_inflight: int = MAX_INFLIGHT) -> None:
        self.name = "vllm-tokenize"
        self._pods = pods
        self.model = model
        self.timeout_s = timeout_s
        self._cache: OrderedDict[bytes, list[int]] = OrderedDict()
        self._cache_limit = cache_tokens
        self._cached = 0
        self._inflight: set[bytes] = set()
        self._max_inflight = max_inflight
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_pod = 0
        self._last_warning = 0.0
        self.fetches = 0
        self.failures = 0
        # One connection pool per mode: building an httpx client costs ~10-50 ms of CPU
        # (TLS context), far more than a loopback /tokenize call.
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None

    # --- Tokenizer (no special tokens; no cache: only the simulator uses these) -------------
    def encode(self, text: str) -> list[int]:
        return self._fetch_sync({"prompt": text, "add_special_tokens": False})

    def decode(self, ids: Sequence[int]) -> str:
        doc = self._post_sync("/detokenize", {"tokens": list(ids)})
        prompt = doc.get("prompt") if isinstance(doc, dict) else None
        if not isinstance(prompt, str):
            raise TokenizeError("/detokenize answer has no string 'prompt'")
        return prompt

    # --- PromptTokenizer ----------------------------------------------------------------------
    def completion_ids(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        body = {"prompt": prompt, "add_special_tokens": add_special_tokens}
        key = _key("prompt", add_special_tokens, prompt)
        hit = self._get(key)
        if hit is not None:
            return hit
        self._request([(key, body)])
        return self._get(key) or []

    def chat_ids(self, chat: ChatPrompt) -> list[int]:
        settings = (chat.add_special_tokens, chat.tools, chat.documents, chat.template_kwargs)
        keys = self._prefix_keys(chat.messages, settings)  # keys[k]: messages[:k+1], no gen. prompt
        full = _key(keys[-1] if keys else b"", chat.add_generation_prompt, chat.continue_final_message)
        hit = self._get(full)
        if hit is not None:
            return hit
        wanted = [(full, self._chat_body(chat, chat.messages, chat.add_generation_prompt,
                                         chat.continue_final_message))]
        if len(chat.messages) > 1 and keys[-2] not in self._cache:
            wanted.append((keys[-2], self._chat_body(chat, chat.messages[:-1], False, False)))
        self._request(wanted)
        for key in (full, *reversed(keys[:-1])):
            hit = self._get(key)
            if hit is not None:
                return hit
        return []

    # --- cache --------------------------------------------------------------------------------
    @staticmethod
    def _prefix_keys(messages: Sequence[Any], settings: tuple[Any, ...]) -> list[bytes]:
        keys: list[bytes] = []
        previous = _key(settings)
        for message in messages:
            previous = _key(previous.hex(), message)
            keys.append(previous)
        return keys

    def _chat_body(self, chat: ChatPrompt, messages: Sequence[Any], generation: bool,
                   continue_final: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": list(messages), "add_generation_prompt": generation,
                                "continue_final_message": continue_final,
                                "add_special_tokens": chat.add_special_tokens}
        if chat.tools is not None:
            body["tools"] = chat.tools
        if chat.documents is not None:
            body["documents"] = chat.documents
        if chat.template_kwargs is not None:
            body["chat_template_kwargs"] = chat.template_kwargs
        return body

    def _get(self, key: bytes) -> list[int] | None:
        ids = self._cache.get(key)
        if ids is not None:
            self._cache.move_to_end(key)
        return ids

    def _put(self, key: bytes, ids: list[int]) -> None:
        if len(ids) > self._cache_limit or key in self._cache:
            return
        self._cache[key] = ids
        self._cached += len(ids)
        while self._cached > self._cache_limit:
            self._cached -= len(self._cache.popitem(last=False)[1])

    # --- fetching -----------------------------------------------------------------------------
    def _request(self, wanted: list[tuple[bytes, dict[str, Any]]]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            for key, body in wanted:
                try:
                    self._put(key, self._fetch_sync(body))
                except TokenizeError as e:
                    self._warn(e)
            return
        for key, body in wanted:
            if key in self._inflight or len(self._inflight) >= self._max_inflight:
                continue
            self._inflight.add(key)
            task = loop.create_task(self._fetch_async(key, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _pod(self) -> str:
        pods = self._pods()
        if not pods:
            raise TokenizeError("no pod to ask for /tokenize")
        self._next_pod = (self._next_pod + 1) % len(pods)
        return pods[self._next_pod].rstrip("/")

    def _with_model(self, body: dict[str, Any]) -> dict[str, Any]:
        return body if self.model is None else {"model": self.model, **body}

    def _post_sync(self, path: str, body: dict[str, Any]) -> Any:
        self.fetches += 1
        try:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout_s)
            response = self._client.post(self._pod() + path, json=self._with_model(body))
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as e:
            self.failures += 1
            raise TokenizeError(f"{path}: {e}") from None

    def _fetch_sync(self, body: dict[str, Any]) -> list[int]:
        return parse_tokenize_response(self._post_sync("/tokenize", body))

    async def _fetch_async(self, key: bytes, body: dict[str, Any]) -> None:
        self.fetches += 1
        try:
            loop = asyncio.get_running_loop()
            if self._aclient is None or self._aclient_loop is not loop:
                self._aclient = httpx.AsyncClient(timeout=self.timeout_s)
                self._aclient_loop = loop
            response = await self._aclient.post(self._pod() + "/tokenize", json=self._with_model(body))
            response.raise_for_status()
            self._put(key, parse_tokenize_response(response.json()))
        except (httpx.HTTPError, ValueError, TokenizeError) as e:
            self.failures += 1
            self._warn(e)
        finally:
            self._inflight.discard(key)

    async def settle(self) -> None:
        """Wait for the background fetches started so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Finish the background fetches and close the connection pools."""
        await self.settle()
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _warn(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            log.warning("pod /tokenize failed (%s); precise prefix scores use what is cached", error)
