"""Which paths and methods the gateway routes to the pool, and the answers for the rest.

The EPP is the only component that sees every request before it reaches a pod, so it is
where unknown paths and wrong methods get proper OpenAI-style answers (a JSON 404 or 405)
instead of whatever the model server's framework prints (aiohttp / FastAPI: text/plain or
`{"detail": ...}`). It also keeps engine admin endpoints (`/v1/load_lora_adapter`,
`/reset_prefix_cache`, `/metrics`, the simulator's `/sim/...`) out of clients' reach: they
are served on the pod's port for operators, not through the gateway.

- Inference paths take a POST with a JSON body; the body is parsed and scheduled.
- Read-only paths (`/v1/models`, `/health`, ...) take GET or HEAD without a body and go to
  any healthy pod.
- OPTIONS on a known path is answered here: 204 with `Allow` (RFC 9110 section 9.3.7).
"""

from __future__ import annotations

import enum

from epp.server import wire
from epp.server.errors import ImmediateAnswer, RequestError


class RouteKind(enum.Enum):
    INFERENCE = "inference"  # POST + JSON body, scheduled
    READ = "read"  # GET / HEAD, no body, any healthy pod


# vLLM's OpenAI-compatible server paths that carry a model request in a JSON body.
INFERENCE_PATHS = frozenset({
    "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses",
    "/tokenize", "/detokenize", "/pooling", "/classify", "/score", "/v1/score",
    "/rerank", "/v1/rerank", "/v2/rerank",
})
READ_PATHS = frozenset({"/v1/models", "/health", "/ping", "/version"})
MODEL_PREFIX = "/v1/models/"  # GET /v1/models/{model}

_ALLOW = {RouteKind.INFERENCE: "POST, OPTIONS", RouteKind.READ: "GET, HEAD, OPTIONS"}
_METHODS = {RouteKind.INFERENCE: frozenset({"POST"}), RouteKind.READ: frozenset({"GET", "HEAD"})}
_OPTIONS_ANSWERS = {kind: wire.immediate_response(204, b"", (("allow", allow),), details="epp_options")
                    for kind, allow in _ALLOW.items()}


def route_kind(path: str) -> RouteKind | None:
    """The kind of a request path (query string ignored), None when the gateway does not serve it."""
    if path in INFERENCE_PATHS:  # the hot path: one set lookup
        return RouteKind.INFERENCE
    if "?" in path:
        path = path.split("?", 1)[0]
    if path in INFERENCE_PATHS:
        return RouteKind.INFERENCE
    if path in READ_PATHS or (path.startswith(MODEL_PREFIX) and len(path) > len(MODEL_PREFIX)):
        return RouteKind.READ
    return None


def classify(method: str, path: str) -> RouteKind:
    """The route of a request; raises RequestError (404 / 405) or ImmediateAnswer (OPTIONS)."""
    kind = route_kind(path)
    if kind is None:
        raise RequestError(404, f"Invalid URL ({method} {_printable(path)})", "not_found")
    if method in _METHODS[kind]:
        return kind
    if method == "OPTIONS":
        raise ImmediateAnswer(_OPTIONS_ANSWERS[kind], 204)
    raise RequestError(405, f"Method {_printable(method)} is not allowed on {_printable(path)}; "
                       f"allowed: {_ALLOW[kind]}", "method_not_allowed", headers=(("allow", _ALLOW[kind]),))


def _printable(text: str, limit: int = 200) -> str:
    """Echo client input in an error message: bounded, printable ASCII only."""
    cut = text[:limit]
    if cut.isascii() and cut.isprintable():
        return cut + ("..." if len(text) > limit else "")
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in cut)
