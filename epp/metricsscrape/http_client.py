"""The HTTP client used by the scrapers, behind a two-method interface.

Two transports: httpx.AsyncClient and aiohttp.ClientSession, both with one shared
keep-alive connection pool and proxies from the environment ignored (pods are addressed
directly). aiohttp is the default: on loopback it costs a fifth of httpx's CPU per GET
and a third per full scrape (docs/observability.md); at 20 scrapes/s per pod that CPU
comes out of the scheduling hot path's share of the same cores.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Protocol

import aiohttp
import httpx

Transport = Literal["aiohttp", "httpx"]


class ScrapeHttpError(Exception):
    """A transport-level failure (connection refused, reset, protocol error)."""


class HttpGetter(Protocol):
    async def get_text(self, url: str) -> tuple[int, str]:
        """(status, body text); raises ScrapeHttpError or TimeoutError."""
        ...

    async def get_json(self, url: str) -> tuple[int, Any]:
        ...

    async def aclose(self) -> None: ...


class HttpxGetter:
    def __init__(self, timeout: float, max_connections: int, client: httpx.AsyncClient | None = None) -> None:
        self._own = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections, keepalive_expiry=60.0),
            trust_env=False,
        )

    async def get_text(self, url: str) -> tuple[int, str]:
        try:
            resp = await self._client.get(url)
        except httpx.HTTPError as e:
            raise ScrapeHttpError(f"{type(e).__name__}: {e}") from e
        return resp.status_code, resp.text

    async def get_json(self, url: str) -> tuple[int, Any]:
        status, text = await self.get_text(url)
        return status, json.loads(text) if status == 200 else None

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()


class AiohttpGetter:
    def __init__(self, timeout: float, max_connections: int) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=60.0),
            timeout=aiohttp.ClientTimeout(total=timeout),
            trust_env=False,
            auto_decompress=True,
        )

    async def get_text(self, url: str) -> tuple[int, str]:
        try:
            async with self._session.get(url) as resp:
                # /metrics is ASCII/UTF-8 by spec; skipping charset sniffing saves CPU per scrape.
                body = await resp.read()
                return resp.status, body.decode("utf-8", errors="replace")
        except aiohttp.ClientError as e:
            raise ScrapeHttpError(f"{type(e).__name__}: {e}") from e

    async def get_json(self, url: str) -> tuple[int, Any]:
        status, text = await self.get_text(url)
        return status, json.loads(text) if status == 200 else None

    async def aclose(self) -> None:
        await self._session.close()


def make_getter(transport: Transport, timeout: float, max_connections: int) -> HttpGetter:
    if transport == "aiohttp":
        return AiohttpGetter(timeout, max_connections)
    if transport == "httpx":
        return HttpxGetter(timeout, max_connections)
    raise ValueError(f"unknown scrape transport {transport!r} (use aiohttp or httpx)")
