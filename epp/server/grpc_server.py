"""grpcio's server hosting the ext_proc service (and gRPC health) on one port.

Used with `--grpc-transport grpcio`; otherwise epp/server/h2grpc.py serves the port
(docs/performance.md, "A gRPC server on the event loop")."""

from __future__ import annotations

from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2

from epp.server.extproc import ExtProcHandler

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


def _identity(b: bytes) -> bytes:
    return b


def ext_proc_generic_handler(handler: ExtProcHandler) -> grpc.GenericRpcHandler:
    method = grpc.stream_stream_rpc_method_handler(
        handler.process,
        request_deserializer=ext_proc_pb2.ProcessingRequest.FromString,
        response_serializer=_identity,
    )
    return grpc.method_handlers_generic_handler(EXT_PROC_SERVICE, {"Process": method})


def build_grpc_server(
    handler: ExtProcHandler,
    address: str,
    extra_handlers: list[grpc.GenericRpcHandler] | None = None,
    max_concurrent_streams: int = 0,
    reuse_port: bool = False,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Create (not start) the server; returns it and the bound port. With `credentials`
    the port serves TLS only (epp.server.tls), else plaintext HTTP/2."""
    options: list[tuple[str, Any]] = [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.enable_channelz", 0),
        ("grpc.enable_retries", 0),
    ]
    if max_concurrent_streams > 0:
        # Makes Envoy open more connections, which SO_REUSEPORT spreads over worker processes.
        options.append(("grpc.max_concurrent_streams", max_concurrent_streams))
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers([ext_proc_generic_handler(handler), *(extra_handlers or [])])
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address} for ext_proc: is another process using the port?")
    return server, port
