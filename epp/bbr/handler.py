"""The BBR ext_proc stream: copy the body's `model` into `X-Gateway-Model-Name`.

GIE's body-based router convention (pkg/bbr: the `model` field into the header named
X-Gateway-Model-Name, in the body response, with clear_route_cache so Envoy matches the
routes again on the new header). Beyond GIE's BBR, this stage knows which pool serves which
model (catalog.py), so the gateway itself answers:
- `GET /v1/models`: every model of every pool, once, with its owned_by (ImmediateResponse);
  `GET /v1/models/{id}`: that card, or 404;
- a body without `model`: 400; a model no pool serves: 404 (OpenAI error shape), before any
  pool's EPP or pod is involved.

Message flow as the EPP's (epp/server/extproc.py): headers (SEND) then the buffered body; in
STREAMED mode with send_body_without_waiting_for_header_response (the generated configs') and
in FULL_DUPLEX_STREAMED mode the headers are answered once the body is complete, with the model
header, then each body chunk in order (STREAMED) or the body handed back in a streamed
BodyResponse (full duplex): one round trip. The header a client sent is removed first, so a
client cannot pick another pool's route than its body's model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from epp.bbr.catalog import ModelCatalog
from epp.bbr.metrics import BbrMetrics
from epp.server import wire
from epp.server.errors import RequestError
from epp.server.wire import FULL_DUPLEX_STREAMED, STREAMED

log = logging.getLogger("epp.bbr")

MODEL_HEADER = "x-gateway-model-name"  # GIE pkg/bbr/plugins/common: X-Gateway-Model-Name
MODELS_PATH = "/v1/models"
MAX_MODEL_LEN = 4096
_HEADERS_CONTINUE = wire.headers_continue()
_BODY_CONTINUE = wire.request_body_response(b"")
_TRAILERS_CONTINUE = wire.request_trailers_continue()
_JSON = (("content-type", "application/json"),)
_decode = msgspec.json.Decoder().decode
_OUTCOME_BY_CODE = {"missing_model": "missing_model", "model_not_found": "unknown_model",
                    "model_catalog_not_ready": "not_ready"}


class BbrHandler:
    def __init__(self, catalog: ModelCatalog, max_body_bytes: int = 4 * 1024 * 1024,
                 metrics: BbrMetrics | None = None) -> None:
        self.catalog = catalog
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics if metrics is not None else BbrMetrics(catalog)

    async def process(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[bytes]:
        path, method, request_id, mode = "", "POST", "", 2
        delayed = False  # the headers are answered with the body (full duplex, STREAMED without waiting)
        chunks: list[bytes] = []
        size = 0
        decided = False
        async for msg in requests:
            which = msg.WhichOneof("request")
            try:
                if which == "request_headers":
                    hdrs = msg.request_headers
                    for h in hdrs.headers.headers:
                        value = h.raw_value.decode("latin-1") if h.raw_value else h.value
                        if h.key == ":path":
                            path = value
                        elif h.key == ":method":
                            method = value
                        elif h.key == "x-request-id":
                            request_id = value
                    if msg.HasField("protocol_config"):
                        config = msg.protocol_config
                        mode = config.request_body_mode
                        delayed = mode == FULL_DUPLEX_STREAMED or (
                            mode == STREAMED and config.send_body_without_waiting_for_header_response)
                    if hdrs.end_of_stream:
                        decided = True
                        yield self._bodyless(method, path, request_id)
                    elif not delayed:
                        yield _HEADERS_CONTINUE
                elif which == "request_body":
                    body_msg = msg.request_body
                    chunks.append(body_msg.body)
                    size += len(body_msg.body)
                    if size > self.max_body_bytes:
                        raise RequestError(413, f"request body exceeds {self.max_body_bytes} bytes",
                                           "request_too_large")
                    if body_msg.end_of_stream:
                        decided = True
                        for out in self._with_body(b"".join(chunks), mode, delayed, len(chunks)):
                            yield out
                elif which == "request_trailers":
                    if not decided:
                        decided = True
                        for out in self._with_body(b"".join(chunks), mode, delayed, len(chunks)):
                            yield out
                    yield _TRAILERS_CONTINUE
                elif which == "response_headers":
                    yield wire.response_headers_continue()
                elif which == "response_body":
                    yield wire.response_body_continue()
                elif which == "response_trailers":
                    yield wire.response_trailers_continue()
            except RequestError as e:
                self.metrics.count(_OUTCOME_BY_CODE.get(e.code or "", "invalid_request"))
                yield e.to_immediate_response(request_id)
                return
            except Exception:
                log.exception("bbr handler failed")
                self.metrics.count("internal_error")
                yield RequestError(500, "internal error in the body-based router",
                                   "bbr_internal_error").to_immediate_response(request_id)
                return

    def _bodyless(self, method: str, path: str, request_id: str) -> bytes:
        route = path.split("?", 1)[0]
        if method in ("GET", "HEAD") and route == MODELS_PATH:
            self._require_complete()
            self.metrics.count("models_list")
            return wire.immediate_response(200, self.catalog.listing(), _JSON)
        if method in ("GET", "HEAD") and route.startswith(MODELS_PATH + "/"):
            model = route[len(MODELS_PATH) + 1:]
            card = self.catalog.card(model)
            if card is None:
                raise self._unknown(model)
            self.metrics.count("models_list")
            return wire.immediate_response(200, json.dumps(card).encode(), _JSON)
        if method == "POST":
            raise RequestError(400, "request body is empty; expected a JSON object with a model",
                               "invalid_request_body")
        # Anything else without a body (/health, ...) carries no model: the route table decides.
        self.metrics.count("passthrough")
        return _HEADERS_CONTINUE

    def _with_body(self, body: bytes, mode: int, delayed: bool, chunks: int) -> list[bytes]:
        try:
            parsed = _decode(body) if body else None
        except msgspec.DecodeError:
            raise RequestError(400, "request body is not valid JSON", "invalid_request_body") from None
        if not isinstance(parsed, dict):
            raise RequestError(400, "request body must be a JSON object", "invalid_request_body")
        model = parsed.get("model")
        if model is None:
            raise RequestError(400, "you must provide a model parameter", "missing_model", param="model")
        if not isinstance(model, str) or not model:
            raise RequestError(400, "model must be a non-empty string", "invalid_model", param="model")
        # It becomes a header value: no control characters, and no longer than an HTTPRoute
        # header match value may be (Gateway API: 4096).
        if len(model) > MAX_MODEL_LEN or any(ord(c) < 0x20 or ord(c) == 0x7F for c in model):
            raise RequestError(400, "model must be at most 4096 characters without control characters",
                               "invalid_model", param="model")
        if self.catalog.pool_of(model) is None:
            self._require_complete()
            raise self._unknown(model)
        # OVERWRITE_IF_EXISTS_OR_ADD replaces a client-sent value.
        mutation = wire.header_mutation(((MODEL_HEADER, model),))
        # clear_route_cache: the route was picked on the headers alone; match it again now.
        common = wire.common_response(mutation, clear_route_cache=True)
        self.metrics.count("routed")
        if mode == FULL_DUPLEX_STREAMED:
            return [wire.request_headers_response(common), wire.streamed_body_response(b"", body, True)]
        if delayed:  # STREAMED: Envoy holds the headers and each chunk until answered, in order
            return [wire.request_headers_response(common), *([_BODY_CONTINUE] * chunks)]
        return [wire.request_body_response(common)]

    def _require_complete(self) -> None:
        if not self.catalog.complete():
            missing = ", ".join(self.catalog.missing_pools())
            raise RequestError(503, f"the models of pool(s) {missing} are not known yet; retry shortly",
                               "model_catalog_not_ready", retry_after_s=1)

    @staticmethod
    def _unknown(model: str) -> RequestError:
        return RequestError(404, f"The model `{model}` does not exist or is not served by this gateway.",
                            "model_not_found", param="model")
