"""The ext_proc stream handler: one gRPC stream per HTTP request.

Message flow (Envoy -> EPP), per processing mode:
- BUFFERED body: request_headers -> (we answer CONTINUE) -> request_body(end_of_stream)
  -> we answer with the destination header mutation + envoy.lb dynamic metadata.
- Headers SKIP + BUFFERED body: only request_body; path and request id come as attributes.
- FULL_DUPLEX_STREAMED body (GIE's default Envoy setup): request_headers, then body chunks;
  once the body is complete we answer the headers message with the mutation and hand the
  body back in a streamed BodyResponse.
- STREAMED body with send_body_without_waiting_for_header_response: Envoy sends the headers
  and the body chunks without waiting and holds them all until answered. Once the body is
  complete we answer the headers with the mutation, then each chunk in order (unchanged, or
  cleared with the rewritten body on the last one): one round trip, and Envoy keeps its copy
  of the body. BUFFERED costs two round trips: Envoy ignores that flag in every mode but
  STREAMED (docs/performance.md). In both streamed modes Envoy ends the stream once it has
  nothing left to send: our configs ask for the response trailers so that it lasts until the
  response ends (docs/architecture.md "Processing modes").
- Bodyless requests (GET /v1/models, /health): decided on the headers message.
- Unknown paths, wrong methods and bad bodies are answered here (epp/server/routes.py,
  request.py) with OpenAI-style JSON errors; OPTIONS gets 204 with `Allow`.
Then optionally response_headers / response_body (usage accounting), and the stream ends
when the HTTP request ends: that releases the in-flight counts (completion bookkeeping).

All answers are pre-encoded protobuf bytes (see wire.py); the handler never raises into
gRPC: any unexpected error becomes a 500 ImmediateResponse so Envoy never hangs.

The client never picks the upstream: every routing answer removes the routing headers a
client could have sent (ROUTING_HEADERS, and any other `x-gateway-destination-endpoint*`
header seen in the request) before it sets the EPP's own. Envoy applies a HeaderMutation's
remove_headers before its set_headers, so one prebuilt fragment does both.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.datastore.inflight import Dispatch, InflightTracker
from epp.headers import canonicalize
from epp.observability.decisions import DecisionBus
from epp.responsecache.cache import CACHE_HEADER, MISS_RESPONSE_HEADERS, ResponseCache
from epp.responsecache.fill import ResponseAssembler
from epp.responsecache.policy import CachePlan
from epp.scheduling.types import CycleState, LLMRequest, SchedulingError, SchedulingResult, cached_prompt_tokens
from epp.server import wire
from epp.server.errors import ImmediateAnswer, RequestError
from epp.server.request import parse_request, rewrite_body
from epp.server.routes import RouteKind, classify
from epp.server.usage import UsageParser
from epp.server.wire import BUFFERED, FULL_DUPLEX_STREAMED, STREAMED

if TYPE_CHECKING:
    from epp.observability.request_tracing import RequestSpans, RequestTracing

log = logging.getLogger("epp.server")

DESTINATION_HEADER = "x-gateway-destination-endpoint"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
METADATA_NAMESPACE = "envoy.lb"
PREFILLER_HEADER = "x-prefiller-host-port"
LEGACY_PREFILLER_HEADER = "x-prefiller-url"  # llm-d's older name; sidecars still read it
# Request headers that steer the upstream (Envoy's ORIGINAL_DST cluster, the P/D sidecar):
# only the EPP may set them, so every routing answer removes client-sent copies first.
ROUTING_HEADERS = (DESTINATION_HEADER, PREFILLER_HEADER, LEGACY_PREFILLER_HEADER)
ROUTING_HEADER_PREFIX = DESTINATION_HEADER  # -served, -subset, ...: never accepted from clients
SEND = 1  # HeaderSendMode

_HEADERS_CONTINUE = wire.headers_continue()
_RESPONSE_HEADERS_CONTINUE = wire.response_headers_continue()
_RESPONSE_BODY_CONTINUE = wire.response_body_continue()
_REQUEST_TRAILERS_CONTINUE = wire.request_trailers_continue()
_RESPONSE_TRAILERS_CONTINUE = wire.response_trailers_continue()
_STRIP_ROUTING_HEADERS = wire.header_mutation((), remove=ROUTING_HEADERS)
_REQUEST_BODY_CONTINUE = wire.request_body_response(b"")
_REQUEST_BODY_CLEAR = wire.request_body_clear()
# STREAMED without send_body_without_waiting_for_header_response: Envoy waits for the answer
# to the headers before it sends any body, so the EPP, which picks from the body, could only
# answer blind. The config generators never emit it; a hand-written config that does gets
# this error on every request instead of unrouted traffic.
_STREAMED_MODE_ERROR = RequestError(
    500, "gateway misconfigured: ext_proc request_body_mode STREAMED cannot route without "
    "send_body_without_waiting_for_header_response: true; set it, or use BUFFERED or "
    "FULL_DUPLEX_STREAMED", "epp_unsupported_body_mode")


class SchedulerLike(Protocol):
    def schedule(self, request: LLMRequest, endpoints: Sequence[Endpoint]) -> tuple[SchedulingResult, CycleState]: ...
    def pre_request(self, state: CycleState, request: LLMRequest, result: SchedulingResult) -> None: ...
    def post_response(self, request: LLMRequest, target: Endpoint, response: dict[str, Any]) -> None: ...


class Admission(Protocol):
    """Admission control; every admitted request is released exactly once when it ends."""

    def admit(self, request: LLMRequest) -> RequestError | None: ...
    def release(self) -> None: ...


class FlowGate(Protocol):
    """Flow control (epp/flowcontrol/controller.py): None routes now, a RequestError refuses,
    anything else is a queue ticket to `await wait(ticket)` on (raises RequestError if refused)."""

    def admit(self, request: LLMRequest, nbytes: int) -> Any: ...
    async def wait(self, ticket: Any) -> None: ...
    def on_evictable(self, request: LLMRequest, abort: Callable[[], None]) -> None: ...
    def may_evict(self, request: LLMRequest) -> bool: ...
    def pod_priority(self, request: LLMRequest) -> int | None: ...
    def on_complete(self, request: LLMRequest | None, response: dict[str, Any] | None) -> None: ...


class Explainer(Protocol):
    """Admin API hook (epp/admin/feed.py): decisions it `wants` are made through the traced
    scheduling path and published with their detail; None (the default) costs nothing."""

    def wants(self, request: LLMRequest) -> bool: ...
    def schedule(self, scheduler: Any, request: LLMRequest, endpoints: Sequence[Endpoint]
                 ) -> tuple[SchedulingResult, CycleState, Any]: ...
    def header_value(self, detail: Any) -> str | None: ...


EXPLAIN_HEADER = "x-epp-explain"


class Authenticator(Protocol):
    """API keys (epp/flowcontrol/tenants.py): raises RequestError (401) for a missing or bad key."""

    def authenticate(self, headers: dict[str, str]) -> Any: ...


class RolloutHook(Protocol):
    """Traffic splitting (epp/rollout/controller.py): `assign` may set request.target_model and
    returns a decision (or None) that `observe` gets back with the response status and the
    seconds from the routing answer to the response headers."""

    def assign(self, request: LLMRequest) -> Any: ...
    def observe(self, decision: Any, status: int, ttft_s: float) -> None: ...


class ServerObserver(Protocol):
    """What the server reports to observability (metrics, traces)."""

    def on_decision(self, request: LLMRequest, result: SchedulingResult, seconds: float) -> None: ...
    def on_rejected(self, request: LLMRequest | None, error: RequestError) -> None: ...
    def on_complete(self, request: LLMRequest, target: Endpoint, response: dict[str, Any],
                    seconds: float) -> None: ...


class NullObserver:
    def on_decision(self, request: LLMRequest, result: SchedulingResult, seconds: float) -> None:
        pass

    def on_rejected(self, request: LLMRequest | None, error: RequestError) -> None:
        pass

    def on_complete(self, request: LLMRequest, target: Endpoint, response: dict[str, Any],
                    seconds: float) -> None:
        pass


@dataclass(slots=True)
class _Stream:
    """Per-HTTP-request state."""

    path: str = ""
    method: str = "POST"
    request_id: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    subset: frozenset[str] | None = None
    body_mode: int = 2  # BUFFERED unless Envoy says otherwise
    chunks: list[bytes] = field(default_factory=list)
    body_bytes: int = 0
    body_messages: int = 0  # request_body messages seen: STREAMED answers each one
    request: LLMRequest | None = None
    targets: list[Endpoint] = field(default_factory=list)
    status: int = 0
    started: float = 0.0
    usage: UsageParser | None = None
    admitted: bool = False
    # Flow control queued the request: the ticket to wait on and what to finish with.
    ticket: Any = None
    gate: FlowGate | None = None  # the gate that issued the ticket (a reload may swap self.flow)
    pending_body: bytes = b""
    pending_trailers: bool = False
    evictable: bool = False  # registered with flow control's eviction (sheddable, body seen)
    evicted: bool = False
    dispatch: Dispatch | None = None  # the in-flight charges, released when the stream ends
    kind: RouteKind | None = None
    # Client-sent x-gateway-destination-endpoint-* headers beyond ROUTING_HEADERS (rare).
    strip: list[str] | None = None
    spans: RequestSpans | None = None  # OpenTelemetry spans, when tracing is on
    error: str = ""  # the error code this stream was answered with, for the span
    rollout: Any = None  # the RolloutHook's decision for this request
    routed: float = 0.0  # when the routing answer was built (perf_counter)
    ttft: float = -1.0  # routing answer -> response headers (or first body bytes), seconds
    first_body: bool = False
    # The ResponseReceived hook, due at the first body chunk of a streamed response
    # (ExtProcHandler._response_received).
    first_token_hook: Callable[[LLMRequest, Endpoint, int], None] | None = None
    dispatch_after: Awaitable[None] | None = None  # SchedulingResult.dispatch_after, to await
    response_headers: dict[str, str] | None = None  # set on the client's response (session token)
    explain: str | None = None  # x-epp-explain response header value (opt-in debug header)
    # Response cache (epp/responsecache): the request's plan, a lookup to await, a fill.
    resp_body_mode: int = 0  # the filter's configured response_body_mode
    cache: CachePlan | None = None
    cache_pending: bool = False
    fill: ResponseAssembler | None = None


@dataclass(slots=True)
class HandlerOptions:
    max_fallbacks: int = 3
    max_body_bytes: int = 4 * 1024 * 1024
    # Read token usage from response bodies when Envoy sends them (response_body_mode).
    parse_usage: bool = True
    # Ask streaming requests for the final usage chunk (stream_options.include_usage), so
    # usage accounting covers streams too; the client then also receives that chunk.
    stream_include_usage: bool = False


class ExtProcHandler:
    def __init__(
        self,
        datastore: Datastore,
        scheduler: Callable[[], SchedulerLike],
        admission: Admission | None = None,
        observer: ServerObserver | None = None,
        options: HandlerOptions | None = None,
        tracker: InflightTracker | None = None,
    ) -> None:
        self.datastore = datastore
        # The in-flight ledger: charged when a decision is committed, released when the
        # stream ends (see epp/datastore/inflight.py).
        self.tracker = tracker if tracker is not None else InflightTracker(datastore)
        self._scheduler = scheduler
        self.admission = admission
        self.observer: ServerObserver = observer or NullObserver()
        self.options = options or HandlerOptions()
        self._dest_fragments: dict[str, bytes] = {}
        self._dest_metadata: dict[str, bytes] = {}  # "pick,fallback,..." -> encoded envoy.lb metadata
        # Set (and swapped on config reload) by the server when flow control is enabled.
        self.flow: FlowGate | None = None
        self.auth: Authenticator | None = None
        # OpenTelemetry spans per request (epp/observability/request_tracing.py); None = off.
        self.tracing: RequestTracing | None = None
        self.rollout: RolloutHook | None = None  # set (and kept across reloads) by the server
        # Committed decisions for the recorder and the admin API (costs a bool check when idle).
        self.decisions = DecisionBus()
        # Set by the server when the admin API or the x-epp-explain debug header is enabled.
        self.explainer: Explainer | None = None
        self.cache: ResponseCache | None = None  # the exact-response cache, when configured
        self._warned_first_token = False  # _response_received's warning, logged once

    # The gRPC stream-stream method (request_deserializer=ProcessingRequest.FromString,
    # response_serializer=identity: we yield encoded bytes).
    async def process(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[bytes]:
        st = _Stream(started=time.perf_counter())
        try:
            async for msg in requests:
                which = msg.WhichOneof("request")
                try:
                    if which == "request_body":
                        out = self._on_request_body(st, msg)
                    elif which == "request_headers":
                        out = self._on_request_headers(st, msg)
                    elif which == "response_headers":
                        out = self._on_response_headers(st, msg)
                    elif which == "response_body":
                        out = self._on_response_body(st, msg)
                    elif which == "request_trailers":
                        out = self._on_request_trailers(st)
                    else:  # response trailers: nothing to do but let them through
                        out = [_RESPONSE_TRAILERS_CONTINUE] if which == "response_trailers" else []
                    if st.cache_pending:  # cacheable: look it up (a hit answers here)
                        out = await self._after_cache_lookup(st)
                    if st.ticket is not None:  # queued by flow control: wait, then route
                        out = await self._after_queue(st)
                    if st.dispatch_after is not None:  # a plugin holds the request (deferral)
                        await self._dispatch_after(st)
                except RequestError as e:
                    st.status, st.error = e.status, e.code or "error"
                    self.observer.on_rejected(st.request, e)
                    yield e.to_immediate_response(st.request_id)
                    return
                except ImmediateAnswer as a:
                    st.status = a.status
                    yield a.payload
                    return
                except Exception:
                    log.exception("ext_proc handler failed", extra={"request_id": st.request_id})
                    err = RequestError(500, "internal error in the endpoint picker", "epp_internal_error")
                    st.status, st.error = 500, "epp_internal_error"
                    self.observer.on_rejected(st.request, err)
                    yield err.to_immediate_response(st.request_id)
                    return
                for item in out:
                    yield item
        finally:
            self._complete(st)

    # --- request side -------------------------------------------------------------------
    def _on_request_headers(self, st: _Stream, msg: Any) -> list[bytes]:
        hdrs = msg.request_headers
        self._read_headers(st, hdrs.headers.headers)
        self._read_metadata(st, msg)
        if msg.HasField("protocol_config"):
            st.body_mode = msg.protocol_config.request_body_mode
            st.resp_body_mode = msg.protocol_config.response_body_mode
            if st.body_mode == STREAMED and not msg.protocol_config.send_body_without_waiting_for_header_response:
                raise _STREAMED_MODE_ERROR
        st.kind = classify(st.method, st.path)
        if hdrs.end_of_stream:
            if st.kind is RouteKind.INFERENCE:
                raise RequestError(400, "request body is empty; expected a JSON object",
                                   "invalid_request_body")
            return [self._decide_bodyless(st)]
        if st.body_mode == FULL_DUPLEX_STREAMED or st.body_mode == STREAMED:
            return []  # answered once the body is complete
        cache = self.cache
        if cache is not None and cache.wants_response_headers(st.method, st.path, st.headers):
            # Possibly cacheable: ask for this request's response headers (Envoy honours a mode
            # override only on a headers message); other requests keep the configured mode.
            return [_HEADERS_CONTINUE + wire.processing_mode(st.body_mode, st.resp_body_mode, SEND)]
        return [_HEADERS_CONTINUE]

    def _on_request_body(self, st: _Stream, msg: Any) -> list[bytes]:
        body_msg = msg.request_body
        st.body_messages += 1
        if not st.path:  # headers were skipped: take what we need from attributes
            self._read_attributes(st, msg)
            self._read_metadata(st, msg)
            if msg.HasField("protocol_config"):
                st.body_mode = msg.protocol_config.request_body_mode
                if st.body_mode == STREAMED:
                    raise _STREAMED_MODE_ERROR
        if st.kind is None:
            st.kind = classify(st.method, st.path or "/v1/completions")
        if st.kind is RouteKind.READ:
            if body_msg.body or st.chunks:
                raise RequestError(400, f"{st.method} {st.path} takes no request body", "unexpected_body")
            if not body_msg.end_of_stream:
                return []
            # An empty body that ended after the headers (chunked, zero bytes): route it.
            mutation, metadata = self._bodyless_mutation(st)
            return self._request_answers(st, mutation, metadata, b"", None)
        if not body_msg.end_of_stream:
            st.chunks.append(body_msg.body)
            st.body_bytes += len(body_msg.body)
            if st.body_bytes > self.options.max_body_bytes:
                raise RequestError(413, f"request body exceeds {self.options.max_body_bytes} bytes",
                                   "request_too_large")
            return []
        body = b"".join((*st.chunks, body_msg.body)) if st.chunks else body_msg.body
        st.chunks = []
        return self._decide_with_body(st, body)

    def _on_request_trailers(self, st: _Stream) -> list[bytes]:
        # Full-duplex requests may end with trailers instead of an end_of_stream body chunk.
        body = b"".join(st.chunks)
        st.chunks = []
        if st.kind is RouteKind.READ and body:
            raise RequestError(400, f"{st.method} {st.path} takes no request body", "unexpected_body")
        out = self._decide_with_body(st, body) if st.request is None else []
        if st.ticket is not None or st.cache_pending:
            st.pending_trailers = True  # answered after the queued decision
            return out
        return [*out, _REQUEST_TRAILERS_CONTINUE]

    def _decide_with_body(self, st: _Stream, body: bytes) -> list[bytes]:
        if self.tracing is not None:
            self._start_spans(st)
        if self.auth is not None:  # here, not on headers: also covers header-skipping modes
            self.auth.authenticate(st.headers)
        request = parse_request(body, st.path or "/v1/completions", st.request_id, st.headers,
                                self.datastore)
        request.candidates = st.subset
        st.request = request
        if self.rollout is not None:
            st.rollout = self.rollout.assign(request)
        if st.spans is not None and self.tracing is not None:
            self.tracing.on_request(st.spans, request)
        cache = self.cache
        if cache is not None:
            st.cache = cache.plan(request.model, request.target_model, st.path or "/v1/completions", body,
                                  st.headers)
            if st.cache is not None and st.cache.lookup:
                st.cache_pending, st.pending_body = True, body
                return []
        return self._admit(st, request, body)

    @staticmethod
    async def _dispatch_after(st: _Stream) -> None:
        """Wait for what a PreRequest plugin made the routing answer wait for (it ends by
        itself); the request is routed whatever becomes of it."""
        hold, st.dispatch_after = st.dispatch_after, None
        assert hold is not None
        try:
            await hold
        except Exception:
            log.exception("dispatch hold failed; routing now", extra={"request_id": st.request_id})

    async def _after_cache_lookup(self, st: _Stream) -> list[bytes]:
        st.cache_pending = False
        plan, cache, request = st.cache, self.cache, st.request
        assert plan is not None and cache is not None and request is not None
        body, st.pending_body = st.pending_body, b""
        value = await cache.lookup(plan)
        if value is not None:
            st.cache, st.request = None, None  # never routed: no completion bookkeeping
            raise ImmediateAnswer(cache.hit_response(plan, value, st.request_id), 200)
        out = self._admit(st, request, body)
        if st.pending_trailers and st.ticket is None:
            out.append(_REQUEST_TRAILERS_CONTINUE)
        return out

    def _admit(self, st: _Stream, request: LLMRequest, body: bytes) -> list[bytes]:
        flow = self.flow
        if flow is not None:
            verdict = flow.admit(request, len(body))
            if verdict is not None:
                if isinstance(verdict, RequestError):
                    raise verdict
                st.ticket, st.gate, st.pending_body = verdict, flow, body
                return []
        return self._route(st, request, body)

    async def _after_queue(self, st: _Stream) -> list[bytes]:
        ticket, gate, st.ticket, st.gate = st.ticket, st.gate, None, None
        assert gate is not None and st.request is not None
        await gate.wait(ticket)
        body, st.pending_body = st.pending_body, b""
        out = self._route(st, st.request, body)
        if st.pending_trailers:
            out.append(_REQUEST_TRAILERS_CONTINUE)
        return out

    def _route(self, st: _Stream, request: LLMRequest, body: bytes) -> list[bytes]:
        mutation, metadata = self._schedule(st, request)
        st.routed = time.perf_counter()
        flow = self.flow
        new_body = rewrite_body(
            body,
            # InferenceModel-style rewrite: the pod must see the target model's name.
            model=request.target_model if request.target_model != request.model else None,
            stream_usage=self.options.stream_include_usage and request.stream,
            # flowControl.forwardPriorityToPods: the pod's vLLM priority comes from the
            # objective; a client-sent `priority` is overwritten, never trusted.
            priority=flow.pod_priority(request) if flow is not None else None,
        )
        if new_body is not None:
            mutation += wire.header_mutation((("content-length", str(len(new_body))),))
        return self._request_answers(st, mutation, metadata, body, new_body)

    @staticmethod
    def _request_answers(st: _Stream, mutation: bytes, metadata: bytes, body: bytes,
                         new_body: bytes | None) -> list[bytes]:
        """The routing answer in the stream's body mode; `new_body` replaces the body."""
        if st.body_mode == FULL_DUPLEX_STREAMED:
            return [wire.request_headers_response(wire.common_response(mutation), metadata),
                    wire.streamed_body_response(b"", body if new_body is None else new_body, True)]
        if st.body_mode == STREAMED:
            # Envoy holds the headers and every chunk until each is answered, in order.
            head = wire.request_headers_response(wire.common_response(mutation), metadata)
            if new_body is None:
                return [head, *([_REQUEST_BODY_CONTINUE] * st.body_messages)]
            return [head, *([_REQUEST_BODY_CLEAR] * (st.body_messages - 1)),
                    wire.request_body_response(wire.common_response(body=new_body))]
        return [wire.request_body_response(wire.common_response(mutation, body=new_body), metadata)]

    def _decide_bodyless(self, st: _Stream) -> bytes:
        """GET /v1/models, /health and the like: any healthy endpoint, least in-flight first."""
        mutation, metadata = self._bodyless_mutation(st)
        return wire.request_headers_response(wire.common_response(mutation), metadata)

    def _bodyless_mutation(self, st: _Stream) -> tuple[bytes, bytes]:
        if self.tracing is not None:
            self._start_spans(st)
        if self.auth is not None:
            self.auth.authenticate(st.headers)
        endpoints = self._eligible(st.subset)
        if not endpoints:
            raise RequestError(503, "no healthy endpoint in the pool", "no_healthy_endpoint")
        target = min(endpoints, key=_load)
        st.targets = [target]
        st.dispatch = self.tracker.dispatch(st.targets, 0)
        mutation = self._dest_fragment(target)
        if st.strip:
            mutation += wire.header_mutation((), st.strip)
        if st.spans is not None and self.tracing is not None:
            self.tracing.end_admission(st.spans)
            mutation += wire.header_mutation(self.tracing.propagation_headers(st.spans))
        return mutation, self._lb_metadata(target.hostport)

    def _schedule(self, st: _Stream, request: LLMRequest) -> tuple[bytes, bytes]:
        if self.admission is not None:
            rejection = self.admission.admit(request)
            if rejection is not None:
                raise rejection
            st.admitted = True
        endpoints = self._eligible(st.subset)
        if not endpoints:
            if st.subset is not None:
                raise RequestError(503, "none of the endpoints in the subset hint is available",
                                   "no_healthy_endpoint")
            if not self.datastore.endpoints():
                raise RequestError(503, "the inference pool has no endpoints", "empty_pool")
            raise RequestError(503, "no healthy endpoint in the inference pool", "no_healthy_endpoint")
        t0 = time.perf_counter()
        scheduler = self._scheduler()
        explainer = self.explainer
        detail: Any = None
        try:
            if explainer is not None and explainer.wants(request):
                result, state, detail = explainer.schedule(scheduler, request, endpoints)
            elif st.spans is None or self.tracing is None:
                result, state = scheduler.schedule(request, endpoints)
            else:
                result, state = self.tracing.schedule(st.spans, scheduler, request, endpoints)
        except SchedulingError as e:
            raise RequestError(e.status, str(e), e.code, retry_after_s=e.retry_after_s) from None
        primary = result.primary
        if primary is None or not primary.targets:
            raise RequestError(503, "no endpoint can serve this request", "no_endpoint_picked")
        targets = primary.targets[: 1 + self.options.max_fallbacks]
        if len(targets) == 1 and self.options.max_fallbacks > 0 and len(primary.scores) > 1:
            targets = self._with_fallbacks(targets[0], primary.scores)
        scheduler.pre_request(state, request, result)
        if result.dispatch_after is not None:
            st.dispatch_after = result.dispatch_after  # awaited before the answer is sent (process)
        seconds = time.perf_counter() - t0
        self.observer.on_decision(request, result, seconds)
        if self.decisions.active:
            self.decisions.publish_decision(request, result, state, seconds, detail)
        if detail is not None and explainer is not None:
            st.explain = explainer.header_value(detail)
        target = targets[0]
        st.targets = [target]
        for profile, res in result.profile_results.items():
            if profile != result.primary_profile and res is not None and res.targets:
                st.targets.append(res.targets[0])  # e.g. the prefill pod of a P/D request
        tracker = self.tracker
        prompt_chars = len(request.prompt_text())
        st.dispatch = tracker.dispatch(st.targets, tracker.estimate_tokens(prompt_chars, request.max_tokens),
                                       tracker.estimate_tokens(prompt_chars, 0), cached_prompt_tokens(state))
        mutation = self._dest_fragment(target)
        if st.strip:
            mutation += wire.header_mutation((), st.strip)
        if result.headers:
            mutation += wire.header_mutation(result.headers.items())
        if st.spans is not None and self.tracing is not None:
            self.tracing.on_decision(st.spans, result, state, st.targets)
            mutation += wire.header_mutation(self.tracing.propagation_headers(st.spans))
        if result.response_headers:
            st.response_headers = result.response_headers
        value = target.hostport if len(targets) == 1 else ",".join(e.hostport for e in targets)
        metadata = self._lb_metadata(value)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("picked", extra={"request_id": request.request_id, "model": request.model,
                                       "target": target.hostport, "profile": result.primary_profile})
        return mutation, metadata

    def _with_fallbacks(self, target: Endpoint, scores: dict[str, float]) -> list[Endpoint]:
        """The pick plus the next best scored endpoints, for Envoy's fallback list."""
        out = [target]
        for key in heapq.nlargest(self.options.max_fallbacks + 1, scores, key=scores.__getitem__):
            if key != target.key:
                ep = self.datastore.get(key)
                if ep is not None and len(out) <= self.options.max_fallbacks:
                    out.append(ep)
        return out

    def _eligible(self, subset: frozenset[str] | None) -> Sequence[Endpoint]:
        endpoints = self.datastore.healthy_endpoints()
        if subset is not None:
            return [e for e in endpoints if e.hostport in subset]
        return endpoints

    def _dest_fragment(self, ep: Endpoint) -> bytes:
        """HeaderMutation: remove client-sent routing headers, set the destination (cached)."""
        frag = self._dest_fragments.get(ep.hostport)
        if frag is None:
            frag = _STRIP_ROUTING_HEADERS + wire.header_mutation(((DESTINATION_HEADER, ep.hostport),))
            if len(self._dest_fragments) > 100_000:
                self._dest_fragments.clear()
            self._dest_fragments[ep.hostport] = frag
        return frag

    def _lb_metadata(self, value: str) -> bytes:
        """The envoy.lb dynamic metadata naming the pick and its fallbacks (cached: the same
        few lists recur, and encoding one is a dozen small Python calls)."""
        metadata = self._dest_metadata.get(value)
        if metadata is None:
            metadata = wire.dynamic_metadata(METADATA_NAMESPACE, ((DESTINATION_HEADER, value),))
            if len(self._dest_metadata) > 100_000:
                self._dest_metadata.clear()
            self._dest_metadata[value] = metadata
        return metadata

    # --- response side ------------------------------------------------------------------
    def _on_response_headers(self, st: _Stream, msg: Any) -> list[bytes]:
        for h in msg.response_headers.headers.headers:
            if h.key == ":status":
                value = h.raw_value or h.value.encode()
                st.status = int(value) if value.isdigit() else 0
                break
        if st.routed:
            st.ttft = time.perf_counter() - st.routed
        if self.options.parse_usage and st.request is not None:
            st.usage = UsageParser(st.request.stream)
        out, body_mode = self._response_headers_answer(st)
        if st.request is not None and st.targets:
            self._response_received(st, st.request, body_mode)
        return out

    def _response_received(self, st: _Stream, request: LLMRequest, body_mode: int) -> None:
        """The first byte of the response (GIE ResponseReceived), from which the latency
        plugins learn TTFT. A streamed response's first byte is its first body chunk, not its
        headers: vLLM answers with a StreamingResponse, and uvicorn sends its headers as soon
        as the request is accepted, before the prefill. So while the body streams through the
        EPP the hook waits for the first chunk (_on_response_body). A response not streamed
        sends its headers with the whole body, and an error has no first token: both at once."""
        scheduler = self._scheduler()
        hook = getattr(scheduler, "response_received", None)
        if hook is None:
            return
        if request.stream and st.status == 200:
            if body_mode in (STREAMED, FULL_DUPLEX_STREAMED):
                st.first_token_hook = hook
                return
            if getattr(scheduler, "response_received_plugins", None) and not self._warned_first_token:
                self._warned_first_token = True
                log.warning("streamed responses do not reach the EPP (response_body_mode %s): the "
                            "latency plugins take a response's headers for its first token, and vLLM "
                            "sends them before its prefill, so TTFT reads near zero; set the ext_proc "
                            "filter's response_body_mode to STREAMED (docs/latency-routing.md)",
                            "BUFFERED" if body_mode == BUFFERED else "NONE")
        hook(request, st.targets[0], st.status)

    def _response_headers_answer(self, st: _Stream) -> tuple[list[bytes], int]:
        """The answer to the response headers, and the response body mode it leaves this
        response in (a mode override, or the filter's)."""
        extra: list[tuple[str, str]] | None = None  # response headers to set for the client
        if st.response_headers or st.explain is not None:
            extra = list((st.response_headers or {}).items())
            if st.explain is not None:
                extra.append((EXPLAIN_HEADER, st.explain))
        if st.cache is not None and self.cache is not None:  # a cacheable miss: `x-epp-cache: miss`
            st.fill = self.cache.start_fill(st.cache, st.status)
            head = MISS_RESPONSE_HEADERS
            if extra:
                head = wire.response_headers_response(wire.common_response(
                    wire.header_mutation([*extra, (CACHE_HEADER, "miss")])))
            if st.fill is not None and st.resp_body_mode == 0:
                # A cache fill: this response's body comes to the EPP (SSE chunk by chunk).
                mode = STREAMED if st.cache.stream else BUFFERED
                return [head + wire.processing_mode(st.body_mode, mode)], mode
            return [head], st.resp_body_mode
        head = _RESPONSE_HEADERS_CONTINUE
        if extra:
            head = wire.response_headers_response(wire.common_response(wire.header_mutation(extra)))
        if (st.resp_body_mode == 0 and self.flow is not None and st.request is not None
                and self.flow.may_evict(st.request)):
            # Flow control's eviction ends a response by answering one of its chunks, so a
            # request it may evict needs its body through the EPP; with the filter's response
            # body mode NONE, ask for this one only (a per-request mode_override, honoured on a
            # headers message), so critical streams skip the extra hop (docs/flow-control.md).
            return [head + wire.processing_mode(st.body_mode, STREAMED)], STREAMED
        return [head], st.resp_body_mode

    def _on_response_body(self, st: _Stream, msg: Any) -> list[bytes]:
        if self.flow is not None and st.request is not None:  # the gate decides who is evictable
            self._evictable(st, st.request)
        if st.usage is not None:
            st.usage.feed(msg.response_body.body)
        hook = st.first_token_hook
        if hook is not None and st.request is not None and st.targets:
            st.first_token_hook = None
            hook(st.request, st.targets[0], st.status)
        if st.routed and not st.first_body:
            # The first body bytes: a streamed completion's first token (vLLM sends its headers
            # before it), so a better time to first token than the headers when Envoy streams
            # response bodies to the EPP.
            st.first_body = True
            st.ttft = time.perf_counter() - st.routed
        fill = st.fill
        if fill is not None and st.cache is not None and self.cache is not None:
            fill.feed(msg.response_body.body, msg.response_body.end_of_stream)
            if msg.response_body.end_of_stream:
                st.fill = None
                self.cache.finish_fill(st.cache, fill)
        return [_RESPONSE_BODY_CONTINUE]

    def _evictable(self, st: _Stream, request: LLMRequest) -> None:
        """Flow control's optional eviction of in-flight sheddable requests: only a response
        that streams through the EPP can be ended, by answering its next chunk with an error
        (Envoy then resets the HTTP stream and the pod sees the client go)."""
        if st.evicted:
            raise RequestError(503, "the request was evicted to make room for higher-priority work; "
                               "retry later", "flow_control_evicted", retry_after_s=1)
        if not st.evictable and self.flow is not None:
            st.evictable = True
            self.flow.on_evictable(request, lambda: setattr(st, "evicted", True))

    def _start_spans(self, st: _Stream) -> None:
        assert self.tracing is not None
        if st.spans is None:
            start_ns = time.time_ns() - int((time.perf_counter() - st.started) * 1e9)
            st.spans = self.tracing.start(st.headers, st.request_id, st.path, start_ns)

    def _complete(self, st: _Stream) -> None:
        if st.spans is not None and self.tracing is not None:
            self.tracing.end(st.spans, st.status, st.error)
        if st.fill is not None and self.cache is not None:
            self.cache.abandon_fill()  # the response never ended (cut): nothing is stored
        if st.admitted and self.admission is not None:
            self.admission.release()
        if st.dispatch is not None:
            self.tracker.complete(st.dispatch)
        if st.rollout is not None and self.rollout is not None:
            try:
                self.rollout.observe(st.rollout, st.status, st.ttft)
            except Exception:
                log.exception("rollout observe failed", extra={"request_id": st.request_id})
        if st.request is None or not st.targets:
            if self.flow is not None:
                self.flow.on_complete(st.request, None)
            return
        response: dict[str, Any] = {"status": st.status}
        if st.usage is not None:
            response.update(st.usage.result())
        seconds = time.perf_counter() - st.started
        if self.flow is not None:
            self.flow.on_complete(st.request, response)  # capacity freed: queued requests may go
        try:
            self._scheduler().post_response(st.request, st.targets[0], response)
            self.observer.on_complete(st.request, st.targets[0], response, seconds)
        except Exception:
            log.exception("post-response hook failed", extra={"request_id": st.request_id})

    # --- helpers ------------------------------------------------------------------------
    @staticmethod
    def _read_headers(st: _Stream, headers: Any) -> None:
        hd = st.headers
        for h in headers:
            key = h.key
            value = h.raw_value.decode("latin-1") if h.raw_value else h.value
            if key == ":path":
                st.path = value
            elif key == ":method":
                st.method = value
            elif key == "x-request-id":
                st.request_id = value
            elif key.startswith(ROUTING_HEADER_PREFIX) and key != DESTINATION_HEADER:
                st.strip = [*(st.strip or ()), key]
            hd[key] = value
        canonicalize(hd)  # llm-d's header names; deprecated aliases folded in (epp/headers.py)

    @staticmethod
    def _read_attributes(st: _Stream, msg: Any) -> None:
        attrs = msg.attributes.get("envoy.filters.http.ext_proc")
        if attrs is None:
            return
        fields = attrs.fields
        if "request.path" in fields:
            st.path = fields["request.path"].string_value
        if "request.id" in fields:
            st.request_id = fields["request.id"].string_value
        if "request.method" in fields:
            st.method = fields["request.method"].string_value

    @staticmethod
    def _read_metadata(st: _Stream, msg: Any) -> None:
        if not msg.HasField("metadata_context"):
            return
        ns = msg.metadata_context.filter_metadata.get(SUBSET_NAMESPACE)
        if ns is None or SUBSET_KEY not in ns.fields:
            return
        value = ns.fields[SUBSET_KEY]
        kind = value.WhichOneof("kind")
        if kind == "list_value":
            st.subset = frozenset(v.string_value for v in value.list_value.values if v.string_value)
        elif kind == "string_value":
            st.subset = frozenset(s.strip() for s in value.string_value.split(",") if s.strip())


def _load(ep: Endpoint) -> tuple[int, int]:
    return (ep.metrics.waiting_queue_size + ep.inflight + ep.peer_inflight, ep.metrics.running_requests)
