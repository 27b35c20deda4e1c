"""The /tokenize-backed tokenizer against a simulated pod running the real Llama-3.1 tokenizer."""

from __future__ import annotations

import asyncio

import pytest

from epp.sim.cluster import simulated_pods
from epp.tokenization.hf import HFPromptTokenizer
from epp.tokenization.prompt import ChatPrompt
from epp.tokenization.remote import RemotePromptTokenizer, TokenizeError, parse_tokenize_response
from tests.helpers.procs import free_port
from tests.helpers.tokenizer_fixture import llama3_dir

SYSTEM = {"role": "system", "content": "You are a support agent for ACME. " * 20}


async def test_cached_per_conversation_prefix_without_blocking_the_loop() -> None:
    local = HFPromptTokenizer(llama3_dir())
    async with simulated_pods(1, time_scale=0.01, tokenizer=llama3_dir()) as cluster:
        remote = RemotePromptTokenizer(lambda: cluster.urls)
        first = ChatPrompt([SYSTEM, {"role": "user", "content": "My order is late."}])
        assert remote.chat_ids(first) == []  # a miss never waits for the network on the loop
        await remote.settle()
        assert remote.chat_ids(first) == local.chat_ids(first)
        # Another conversation with the same system prompt: the shared history is known already
        # (fetched with the first request), so its leading blocks hash as on the pod at once.
        second = ChatPrompt([SYSTEM, {"role": "user", "content": "Where is my refund?"}])
        history = local.chat_ids(ChatPrompt([SYSTEM], add_generation_prompt=False))
        got = remote.chat_ids(second)
        assert got == history and local.chat_ids(second)[:len(history)] == history
        await remote.settle()
        assert remote.chat_ids(second) == local.chat_ids(second)
        assert remote.completion_ids("Hello") == []
        await remote.settle()
        assert remote.completion_ids("Hello") == local.completion_ids("Hello")
        fetches = remote.fetches
        assert remote.chat_ids(second) == local.chat_ids(second) and remote.fetches == fetches  # cached

        # Without a running event loop (a worker thread, a benchmark) a miss is fetched inline.
        third = ChatPrompt([SYSTEM, {"role": "user", "content": "Cancel it."}], tools=[
            {"type": "function", "function": {"name": "cancel"}}])
        assert await asyncio.to_thread(remote.chat_ids, third) == local.chat_ids(third)
        await remote.aclose()


async def test_unreachable_pod_degrades_to_no_tokens() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    remote = RemotePromptTokenizer(lambda: [url], timeout_s=0.5)
    chat = ChatPrompt([{"role": "user", "content": "x"}])
    assert remote.chat_ids(chat) == []
    await remote.settle()
    assert remote.chat_ids(chat) == [] and remote.failures >= 1
    empty = RemotePromptTokenizer(lambda: [])
    assert await asyncio.to_thread(empty.completion_ids, "x") == []
    await remote.aclose()


def test_response_shape_is_checked() -> None:
    assert parse_tokenize_response({"count": 2, "max_model_len": 10, "tokens": [1, 2]}) == [1, 2]
    for bad in ([1, 2], {"count": 3, "tokens": [1, 2]}, {"count": 1, "tokens": ["a"]}, {"count": 0}):
        with pytest.raises(TokenizeError):
            parse_tokenize_response(bad)
