"""Streamed completions against a (simulated) vLLM pod, timed to their first token."""

from __future__ import annotations

import time

import httpx


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
