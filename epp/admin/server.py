"""The admin API's own gRPC server: its own port, loopback by default, read-only.

Bound to a loopback address it serves anyone on the host (like the metrics port). Bound to
any other address it refuses to start without a bearer token (`--admin-token-file` or the
EPP_ADMIN_TOKEN environment variable), and every call must carry `authorization: Bearer
<token>`; the comparison is constant-time (hmac.compare_digest) so response timing does not
leak how much of a guess was right.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from epp.admin.options import AdminOptions
from epp.admin.proto import pb_grpc
from epp.admin.service import AdminService, AdminState

log = logging.getLogger("epp.admin")

class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Rejects calls without the right `authorization: Bearer <token>` (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or wrong bearer token (metadata 'authorization: Bearer <token>')")

        async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or wrong bearer token (metadata 'authorization: Bearer <token>')")
            yield  # pragma: no cover  (makes this an async generator for server-streaming calls)

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny_stream)

    def authorized(self, metadata: Any) -> bool:
        got = b""
        for key, value in metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else bytes(value)
                break
        return hmac.compare_digest(got, self._expected)

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        if self.authorized(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        method: str = handler_call_details.method or ""
        return self._deny_stream if method.endswith("/WatchDecisions") else self._deny_unary


class AdminServer:
    def __init__(self, options: AdminOptions, state: AdminState) -> None:
        options.validate()
        self.options = options
        self.service = AdminService(state)
        self.port = 0
        self._server: Any = None

    async def start(self) -> None:
        opts = self.options
        interceptors = [BearerTokenInterceptor(opts.token)] if opts.token else []
        server = grpc.aio.server(interceptors=interceptors)
        pb_grpc.add_AdminServicer_to_server(self.service, server)
        host = f"[{opts.host}]" if ":" in opts.host and not opts.host.startswith("[") else opts.host
        try:
            self.port = server.add_insecure_port(f"{host}:{opts.port}")
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {opts.host}:{opts.port} for the admin API")
        await server.start()
        self._server = server
        log.info("admin API (epp.v1.Admin) on %s:%d%s", opts.host, self.port,
                 ", bearer token required" if opts.token else "")

    async def stop(self, grace: float = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
