"""TLS on the ext_proc port: flags, the self-signed certificate, a mounted pair and its rotation,
checked with a real gRPC client doing real TLS handshakes on loopback."""

from __future__ import annotations

import argparse
import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from epp.cli import build_parser
from epp.scheduling.registry import ConfigError
from epp.server.cli import tls_options
from epp.server.h2grpc import H2GrpcServer
from epp.server.tls import (
    CERT_FILE,
    KEY_FILE,
    CertReloader,
    TLSError,
    TLSOptions,
    load_pair,
    self_signed_pair,
    server_credentials,
    server_ssl_context,
    write_pair,
)


def _serve_args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *extra])


def test_secure_serving_defaults_follow_the_mode() -> None:
    assert tls_options(_serve_args(), kubernetes_mode=True).enabled is True
    assert tls_options(_serve_args(), kubernetes_mode=False).enabled is False
    # The reference EPP's Go-style spellings.
    assert tls_options(_serve_args("--secure-serving=false"), kubernetes_mode=True).enabled is False
    assert tls_options(_serve_args("--secure-serving"), kubernetes_mode=False).enabled is True
    with pytest.raises(TLSError, match="cannot read"):  # checked at start, not at the first handshake
        tls_options(_serve_args("--cert-path", "/nonexistent/tls"), kubernetes_mode=True)
    with pytest.raises(ConfigError, match="--cert-path needs"):
        tls_options(_serve_args("--secure-serving=false", "--cert-path", "/x"), kubernetes_mode=True)
    with pytest.raises(SystemExit):
        _serve_args("--secure-serving=maybe")


def test_cert_path_flags(tmp_path: Path) -> None:
    write_pair(self_signed_pair(["localhost"]), tmp_path)
    opts = tls_options(_serve_args("--cert-path", str(tmp_path), "--enable-cert-reload=false"),
                       kubernetes_mode=True)
    assert opts == TLSOptions(enabled=True, cert_path=tmp_path, reload=False)


def test_self_signed_certificate_names_and_key(tmp_path: Path) -> None:
    pair = self_signed_pair(["epp.default.svc", "127.0.0.1"])
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["epp.default.svc"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    write_pair(pair, tmp_path)
    assert load_pair(tmp_path) == pair
    assert (tmp_path / KEY_FILE).stat().st_mode & 0o077 == 0


def test_mismatched_or_missing_pair_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TLSError, match=r"cannot read tls\.crt and tls\.key"):
        load_pair(tmp_path)
    write_pair(self_signed_pair(["a"]), tmp_path)
    (tmp_path / KEY_FILE).write_bytes(self_signed_pair(["b"]).key_pem)
    with pytest.raises(TLSError, match="does not belong"):
        load_pair(tmp_path)
    (tmp_path / CERT_FILE).write_text("garbage")
    with pytest.raises(TLSError, match="not a PEM"):
        load_pair(tmp_path)


async def _health_server(creds: grpc.ServerCredentials) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port


async def _check(port: int, root_pem: bytes | None, name: str = "localhost") -> bool:
    """One fresh connection (a new handshake) and a health Check; False if TLS fails."""
    if root_pem is None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    else:
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{port}", grpc.ssl_channel_credentials(root_certificates=root_pem),
            options=[("grpc.ssl_target_name_override", name)])
    async with channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture
async def cert_dir(tmp_path: Path) -> AsyncIterator[Path]:
    yield tmp_path / "tls"
    shutil.rmtree(tmp_path / "tls", ignore_errors=True)


class _Stoppable(Protocol):
    async def stop(self, grace: float | None) -> Any: ...


async def _serve(kind: str, opts: TLSOptions) -> tuple[_Stoppable, int, CertReloader | None]:
    """A TLS port with a health Check on it: grpcio's server (server_credentials) or the EPP's
    own HTTP/2 server (server_ssl_context); the same client checks both."""
    if kind == "grpcio":
        creds, reloader = server_credentials(opts)
        server, port = await _health_server(creds)
        return server, port, reloader
    context, reloader = server_ssl_context(opts)

    async def check(raw: bytes) -> bytes:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()

    native = H2GrpcServer("127.0.0.1", 0, ssl=context.base)
    native.add_unary_method("/grpc.health.v1.Health/Check", check)
    await native.start()
    return native, native.port, reloader


@pytest.mark.parametrize("kind", ["grpcio", "native"])
async def test_mounted_pair_is_served_and_rotation_is_picked_up(cert_dir: Path, kind: str) -> None:
    first, second = self_signed_pair(["localhost"]), self_signed_pair(["localhost"])
    write_pair(first, cert_dir)
    server, port, reloader = await _serve(kind, TLSOptions(enabled=True, cert_path=cert_dir, check_interval_s=0.0))
    assert reloader is not None
    try:
        assert await _check(port, first.cert_pem)
        assert not await _check(port, second.cert_pem)  # the client verifies: wrong CA fails
        assert not await _check(port, None)  # plaintext to a TLS port fails
        # A half-done rotation (new cert, old key) keeps the old pair in service.
        (cert_dir / CERT_FILE).write_bytes(second.cert_pem)
        assert await _check(port, first.cert_pem)
        # Kubernetes swaps the Secret volume's files; the next handshake uses the new pair.
        (cert_dir / KEY_FILE).write_bytes(second.key_pem)
        assert await _check(port, second.cert_pem)
        assert not await _check(port, first.cert_pem)
        assert reloader.reloads == 1
    finally:
        await server.stop(0)


@pytest.mark.parametrize("kind", ["grpcio", "native"])
async def test_self_signed_when_no_cert_path(kind: str) -> None:
    server, port, reloader = await _serve(kind, TLSOptions(enabled=True))
    assert reloader is None
    try:
        assert not await _check(port, None)
        # A client that does not verify (what gateways do with the reference EPP) connects:
        # fetch the served certificate and trust exactly it.
        cert = await asyncio.to_thread(_server_cert_pem, port)
        assert await _check(port, cert.encode(), name="localhost")
    finally:
        await server.stop(0)


def _server_cert_pem(port: int) -> str:
    import ssl

    return ssl.get_server_certificate(("127.0.0.1", port))
