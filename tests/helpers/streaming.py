"""Streamed completions against a (simulated) vLLM pod, timed to their first token."""

from __future__ import annotations

import random
import time

import httpx

from epp.bench.workloads import words
from epp.tokenization.tokenizer import SimpleTokenizer


def distinct_prompt(tag: str, tokens: int) -> str:
    """About `tokens` tokens of the workloads' vocabulary after a unique head (the block hashes
    chain, so no prefix is shared). New words would fill the process's shared tokenizer
    vocabulary and change what other tests' ids detokenize to."""
    text = f"{tag} " + words(random.Random(tag), tokens * 6)
    while len(SimpleTokenizer().encode(text)) > tokens:
        text = text[: int(len(text) * 0.99)]
    return text


async def first_token_at(client: httpx.AsyncClient, url: str, prompt: str) -> tuple[float, float]:
    """(sent, first token) of a streamed 2-token completion of `prompt` at `url`, both in
    time.monotonic() seconds."""
    sent = time.monotonic()
    async with client.stream("POST", url + "/v1/completions",
                             json={"prompt": prompt, "max_tokens": 2, "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                return sent, time.monotonic()
    raise AssertionError("no token streamed")


async def seconds_to_first_token(client: httpx.AsyncClient, url: str, prompt: str) -> float:
    sent, first = await first_token_at(client, url, prompt)
    return first - sent
