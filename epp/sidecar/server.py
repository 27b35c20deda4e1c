"""The P/D routing sidecar: an HTTP proxy in front of one decode engine.

Speaks llm-d's routing-sidecar protocol. For POST /v1/completions and /v1/chat/completions
carrying `x-prefiller-host-port` (set by the EPP's pd-profile-handler), it first sends a
single-token, non-streaming copy of the request to that prefill pod, takes the KV-transfer
parameters from its answer, and then sends the client's request with those parameters to
the local decoder, streaming the decoder's answer back unchanged (SSE included). Without
the header, and for every other path (/health, /v1/models, ...), it is a plain proxy.

The prefill target must be a member of the InferencePool or an explicitly allowed entry
(epp/sidecar/allowlist.py); anything else is refused with 403 before any connection is
made, so a header that names an arbitrary host cannot turn the sidecar into a proxy.

Unlike llm-d's sidecar, a failed remote prefill (unreachable, timeout, error status,
answer without KV parameters) does not fail the request by default: the original request
goes to the decoder, which prefills locally; the failure is logged and counted
(`on_prefill_error="fail"` restores llm-d's behaviour of returning the error).

GET /metrics returns the decoder's metrics followed by the sidecar's own, so the EPP keeps
scraping the engine through the pool's target port; /sidecar/metrics has only the latter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import msgspec
from aiohttp import web
from prometheus_client import generate_latest

from epp.datastore.datastore import Datastore
from epp.datastore.local import LocalEndpointSource
from epp.k8s.cli import KubernetesOptions
from epp.sidecar import metrics as sm
from epp.sidecar.allowlist import PrefillAllowlist
from epp.sidecar.connectors import Connector, MissingTransferParams, make_connector

log = logging.getLogger(__name__)

PREFILLER_HEADER = "x-prefiller-host-port"
LEGACY_PREFILLER_HEADER = "x-prefiller-url"  # llm-d's older name, still accepted
REQUEST_ID_HEADER = "x-request-id"
INFERENCE_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})

# Not forwarded in either direction (RFC 9110 7.6.1), plus the ones the proxy recomputes.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length",
})
# Never forwarded upstream: a prefill pod that runs a sidecar itself (role "both") would
# otherwise prefill to itself forever.
_UPSTREAM_DROP = _HOP_BY_HOP | {PREFILLER_HEADER, LEGACY_PREFILLER_HEADER, REQUEST_ID_HEADER}
_RESPONSE_DROP = _HOP_BY_HOP - {"content-length"}

_json_decoder = msgspec.json.Decoder()
_json_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class SidecarConfig:
    decoder_url: str = "http://127.0.0.1:8200"
    connector: str = "nixlv2"
    host: str = "127.0.0.1"
    port: int = 8100
    prefill_timeout: float = 60.0  # seconds for the whole prefill leg
    connect_timeout: float = 5.0
    on_prefill_error: Literal["fallback", "fail"] = "fallback"
    # Prefill targets allowed besides the pool's members: `host:port`, or `host` for any port.
    allowed_prefill_targets: frozenset[str] = frozenset()
    # Where the pool's members come from (the same sources as `epp serve`): the local pool
    # manifest + endpoints file, or the InferencePool in Kubernetes. Neither: only the
    # explicit targets are allowed.
    pool_file: str | None = None
    endpoints_file: str | None = None
    kubernetes: KubernetesOptions | None = None
    prefiller_scheme: Literal["http", "https"] = "http"
    max_body_bytes: int = 64 * 1024 * 1024

    def validate(self) -> None:
        parts = urlsplit(self.decoder_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"--decoder-url must be an http(s) URL like http://127.0.0.1:8200, got {self.decoder_url!r}"
            )
        make_connector(self.connector)
        if self.prefill_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("timeouts must be > 0 seconds")
        if self.on_prefill_error not in ("fallback", "fail"):
            raise ValueError(f"on_prefill_error must be 'fallback' or 'fail', got {self.on_prefill_error!r}")
        if (self.pool_file is None) != (self.endpoints_file is None):
            raise ValueError("--pool-file and --endpoints-file go together (the local pool source)")
        if self.pool_file is not None and self.kubernetes is not None:
            raise ValueError("choose one pool source: --pool-file/--endpoints-file or --pool-name")

    @property
    def has_pool_source(self) -> bool:
        return self.pool_file is not None or self.kubernetes is not None


class PrefillFailed(Exception):
    def __init__(self, reason: str, detail: str, status: int = 502, body: bytes = b"") -> None:
        super().__init__(detail)
        self.reason = reason
        self.status = status
        self.body = body


class SidecarServer:
    """The aiohttp application and the pooled upstream client of one sidecar."""

    def __init__(self, config: SidecarConfig, pool: Datastore | None = None) -> None:
        """`pool`: the pool's members, kept current by the caller's endpoint source (serve())."""
        config.validate()
        self.config = config
        self.allowlist = PrefillAllowlist(config.allowed_prefill_targets, pool)
        self.decoder_url = config.decoder_url.rstrip("/")
        self.connector: Connector = make_connector(config.connector)
        self.metrics = sm.SidecarMetrics()
        self._client: httpx.AsyncClient | None = None
        self.app = web.Application(client_max_size=config.max_body_bytes)
        self.app.router.add_post("/v1/completions", self.handle_inference)
        self.app.router.add_post("/v1/chat/completions", self.handle_inference)
        self.app.router.add_get("/metrics", self.handle_metrics)
        self.app.router.add_get("/sidecar/metrics", self.handle_own_metrics)
        self.app.router.add_route("*", "/{tail:.*}", self.handle_passthrough)
        self.app.on_startup.append(self._start_client)
        self.app.on_cleanup.append(self._close_client)

    # --- lifecycle ------------------------------------------------------------------------
    def runner(self) -> web.AppRunner:
        # handler_cancellation: a client that goes away cancels its handler, which closes the
        # upstream connections, so the engines abort the request instead of generating into
        # the void (aiohttp keeps handlers running by default).
        return web.AppRunner(self.app, access_log=None, handler_cancellation=True)

    async def _start_client(self, _: web.Application) -> None:
        # One pooled client for the decoder and every prefiller. No read timeout on the
        # decoder: a long generation streams for minutes; the prefill leg has its own bound.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=self.config.connect_timeout, read=None, write=60.0, pool=None),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
            follow_redirects=False,
        )

    async def _close_client(self, _: web.Application) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("SidecarServer used before its application started")
        return self._client

    # --- handlers -------------------------------------------------------------------------
    async def handle_inference(self, request: web.Request) -> web.StreamResponse:
        request_id = request.headers.get(REQUEST_ID_HEADER) or str(uuid.uuid4())
        raw = await request.read()
        prefiller = self._prefiller(request)
        headers = _upstream_headers(request.headers.items(), request_id)
        if prefiller is None:
            self.metrics.requests.labels(sm.MODE_PASSTHROUGH).inc()
            return await self._forward(request, self._decoder(request), raw, headers, request_id)

        if not self.allowlist.allows(prefiller):
            self.metrics.prefill_errors.labels(sm.PREFILL_FORBIDDEN).inc()
            log.warning("prefill target %r is not a pool member nor allowed; refused (request %s)",
                        prefiller[:100], request_id)
            return _error(403, f"prefill target {prefiller[:100]!r} is not allowed", "forbidden")
        try:
            body = _json_decoder.decode(raw)
        except msgspec.DecodeError as e:
            return _error(400, f"request body is not valid JSON: {e}", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object", "invalid_request_error")

        try:
            decode_body = await self._prefill(request, prefiller, body, headers, request_id)
        except PrefillFailed as e:
            self.metrics.prefill_errors.labels(e.reason).inc()
            if self.config.on_prefill_error == "fail":
                log.error(
                    "remote prefill on %s failed (%s: %s), request %s", prefiller, e.reason, e, request_id
                )
                self.metrics.requests.labels(sm.MODE_FAILED).inc()
                if e.body:
                    return web.Response(status=e.status, body=e.body, content_type="application/json")
                return _error(e.status, f"remote prefill on {prefiller} failed: {e}", "bad_gateway")
            log.warning(
                "remote prefill on %s failed (%s: %s); decoding with local prefill, request %s",
                prefiller, e.reason, e, request_id,
            )
            self.metrics.requests.labels(sm.MODE_FALLBACK).inc()
            return await self._forward(request, self._decoder(request), raw, headers, request_id)

        self.metrics.requests.labels(sm.MODE_DISAGGREGATED).inc()
        payload = raw if decode_body is None else _json_encoder.encode(decode_body)
        return await self._forward(request, self._decoder(request), payload, headers, request_id)

    async def handle_passthrough(self, request: web.Request) -> web.StreamResponse:
        request_id = request.headers.get(REQUEST_ID_HEADER) or str(uuid.uuid4())
        body = await request.read() if request.can_read_body else b""
        headers = _upstream_headers(request.headers.items(), request_id)
        return await self._forward(request, self._decoder(request), body, headers, request_id)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        own = generate_latest(self.metrics.registry)
        try:
            upstream = await self.client.get(self.decoder_url + "/metrics", timeout=10.0)
        except httpx.HTTPError as e:
            self.metrics.decoder_errors.inc()
            log.warning("decoder /metrics unreachable: %r", e)
            return web.Response(status=502, body=own, content_type="text/plain")
        text = upstream.content
        if text and not text.endswith(b"\n"):
            text += b"\n"
        content_type = upstream.headers.get("content-type", "text/plain; version=0.0.4; charset=utf-8")
        return web.Response(
            status=upstream.status_code, body=text + own, headers={"Content-Type": content_type}
        )

    async def handle_own_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")

    # --- internals ------------------------------------------------------------------------
    def _decoder(self, request: web.Request) -> str:
        return self.decoder_url + request.rel_url.raw_path_qs

    def _prefiller(self, request: web.Request) -> str | None:
        values = request.headers.getall(PREFILLER_HEADER, []) or request.headers.getall(
            LEGACY_PREFILLER_HEADER, []
        )
        if not values:
            return None
        # Proxies may fold repeated headers into one comma-separated line; use the first.
        first = values[0].split(",", 1)[0].strip()
        first = first.removeprefix("http://").removeprefix("https://").rstrip("/")
        return first or None

    async def _prefill(
        self, request: web.Request, prefiller: str, body: dict[str, Any], headers: dict[str, str],
        request_id: str,
    ) -> dict[str, Any] | None:
        """Run the prefill leg; returns the decode body (None: send the original bytes)."""
        url = f"{self.config.prefiller_scheme}://{prefiller}{request.rel_url.raw_path_qs}"
        prefill_body = _json_encoder.encode(self.connector.prefill_body(body))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.prefill_timeout):
                resp = await self.client.post(url, content=prefill_body, headers=headers)
        except TimeoutError:
            limit = self.config.prefill_timeout
            raise PrefillFailed(sm.PREFILL_TIMEOUT, f"no answer within {limit:g}s") from None
        except httpx.HTTPError as e:
            raise PrefillFailed(sm.PREFILL_CONNECT, f"{type(e).__name__}: {e}") from None
        if not 200 <= resp.status_code < 300:
            raise PrefillFailed(
                sm.PREFILL_STATUS, f"status {resp.status_code}: {resp.text[:200]!r}",
                status=resp.status_code, body=resp.content,
            )
        self.metrics.prefill_duration.observe(time.perf_counter() - started)
        if not self.connector.uses_prefill_response:
            return None
        try:
            answer = _json_decoder.decode(resp.content)
        except msgspec.DecodeError as e:
            raise PrefillFailed(sm.PREFILL_INVALID_RESPONSE, f"answer is not JSON: {e}") from None
        if not isinstance(answer, dict):
            raise PrefillFailed(sm.PREFILL_INVALID_RESPONSE, "answer is not a JSON object")
        try:
            return self.connector.decode_body(body, answer)
        except MissingTransferParams as e:
            raise PrefillFailed(sm.PREFILL_MISSING_PARAMS, str(e)) from None

    async def _forward(
        self, request: web.Request, url: str, body: bytes, headers: Mapping[str, str], request_id: str
    ) -> web.StreamResponse:
        """Send the request upstream and stream the answer back as it arrives."""
        upstream_req = self.client.build_request(request.method, url, content=body, headers=headers)
        try:
            upstream = await self.client.send(upstream_req, stream=True)
        except httpx.HTTPError as e:
            self.metrics.decoder_errors.inc()
            log.error("decoder %s unreachable: %r (request %s)", self.decoder_url, e, request_id)
            return _error(502, f"decode engine unreachable: {type(e).__name__}", "bad_gateway")
        try:
            response = web.StreamResponse(status=upstream.status_code, reason=upstream.reason_phrase)
            for name, value in upstream.headers.multi_items():
                if name.lower() not in _RESPONSE_DROP:
                    response.headers.add(name, value)
            response.headers.setdefault(REQUEST_ID_HEADER, request_id)
            await response.prepare(request)
            # Raw bytes: no re-encoding, SSE events pass through as the engine flushes them.
            async for chunk in upstream.aiter_raw():
                await response.write(chunk)
            await response.write_eof()
            return response
        except httpx.HTTPError as e:
            # Headers are already sent; all that is left is to cut the stream short.
            self.metrics.decoder_errors.inc()
            log.error("decoder stream broke: %r (request %s)", e, request_id)
            raise
        finally:
            await upstream.aclose()


def _upstream_headers(items: Iterable[tuple[str, str]], request_id: str) -> dict[str, str]:
    # The same x-request-id on both legs (as llm-d), so engine logs of a pair line up.
    headers = {k: v for k, v in items if k.lower() not in _UPSTREAM_DROP}
    headers[REQUEST_ID_HEADER] = request_id
    return headers


def _error(status: int, message: str, kind: str) -> web.Response:
    # OpenAI / vLLM error shape, so clients report it like an engine error.
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


async def serve(config: SidecarConfig, ready: asyncio.Event | None = None) -> None:
    """Run a sidecar until cancelled."""
    async with contextlib.AsyncExitStack() as stack:
        pool: Datastore | None = None
        if config.has_pool_source:
            pool = Datastore()
            await _start_pool_source(config, pool, stack)
        server = SidecarServer(config, pool)
        if server.allowlist.empty:
            log.warning("no pool source and no --allowed-prefill-targets: every remote prefill "
                        "target is refused (requests with a prefill header get 403)")
        await _serve(server, ready)


async def _start_pool_source(config: SidecarConfig, pool: Datastore, stack: contextlib.AsyncExitStack) -> None:
    if config.kubernetes is not None:
        from epp.k8s.source import KubernetesSource

        k8s = KubernetesSource(config.kubernetes, pool)
        stack.push_async_callback(k8s.stop)
        await k8s.start()
    elif config.pool_file is not None and config.endpoints_file is not None:
        local = LocalEndpointSource(pool, config.pool_file, config.endpoints_file)
        stack.push_async_callback(local.stop)
        await local.start()


async def _serve(server: SidecarServer, ready: asyncio.Event | None) -> None:
    config = server.config
    runner = server.runner()
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
    await site.start()
    log.info(
        "P/D sidecar listening on %s:%d, decoder %s, connector %s, on prefill error: %s, "
        "prefill targets allowed: %s",
        config.host, config.port, config.decoder_url, config.connector, config.on_prefill_error,
        server.allowlist.describe(),
    )
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
