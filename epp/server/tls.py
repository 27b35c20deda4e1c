"""TLS for the ext_proc port, with the reference EPP's flags and semantics.

    --secure-serving[=true|false]   default: on in Kubernetes mode (--pool-name), off locally
    --cert-path DIR                 DIR/tls.crt + DIR/tls.key (a kubernetes.io/tls Secret
                                    mounted as a volume); without it a self-signed
                                    certificate is generated at start
    --enable-cert-reload[=bool]     re-read DIR when the files change (default on)

Why: gateways that implement InferencePool (Envoy AI Gateway, agentgateway, Istio with the
DestinationRule of the GIE guides) connect to the EPP over TLS, as the reference EPP serves
TLS by default. They do not verify the EPP's certificate against a CA by default, which is
why a self-signed certificate is enough; a mounted certificate lets a gateway that does
verify it (an Envoy cluster with a trusted CA, see epp/localstack/envoy_config.py) do so.

Reload uses gRPC's dynamic server credentials: gRPC calls `CertReloader.fetch` on every new
TLS handshake, which re-reads the pair only when a file changed (checked at most every
`check_interval_s`) and only switches when the new key matches the new certificate, so a
half-written rotation keeps the old pair. Connections already open keep their session.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

CERT_FILE = "tls.crt"  # the key names of a kubernetes.io/tls Secret (and the reference's)
KEY_FILE = "tls.key"


class TLSError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TLSOptions:
    enabled: bool = False
    cert_path: Path | None = None  # directory with tls.crt and tls.key; None: self-signed
    reload: bool = True
    check_interval_s: float = 1.0


def parse_bool_flag(value: str) -> bool:
    """Go's strconv.ParseBool, so `--secure-serving=false` reads as in the reference EPP."""
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError(f"not a boolean: {value!r} (use true or false)")


@dataclass(frozen=True, slots=True)
class KeyPair:
    key_pem: bytes
    cert_pem: bytes


def self_signed_pair(hosts: list[str] | None = None, days: int = 365) -> KeyPair:
    """An ECDSA P-256 key and a self-signed serving certificate for `hosts` (DNS names or
    IPs; default: this host's name, localhost, 127.0.0.1 and ::1)."""
    names = hosts or [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "llm-epp")])
    sans: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        # CA:TRUE so a client can pin this certificate as its own trust anchor.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
        cert.public_bytes(serialization.Encoding.PEM),
    )


def write_pair(pair: KeyPair, directory: Path) -> None:
    """Write tls.crt / tls.key into `directory` (tests and the local stack)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / KEY_FILE).write_bytes(pair.key_pem)
    os.chmod(directory / KEY_FILE, 0o600)
    (directory / CERT_FILE).write_bytes(pair.cert_pem)


def load_pair(directory: Path) -> KeyPair:
    """Read and check a mounted pair: both files present, PEM, and the key matches."""
    cert_file, key_file = directory / CERT_FILE, directory / KEY_FILE
    try:
        cert_pem, key_pem = cert_file.read_bytes(), key_file.read_bytes()
    except OSError as e:
        raise TLSError(f"--cert-path {directory}: cannot read {CERT_FILE} and {KEY_FILE}: {e}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as e:
        raise TLSError(f"--cert-path {directory}: not a PEM certificate and key: {e}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if (cert.public_key().public_bytes(serialization.Encoding.DER, spki)
            != key.public_key().public_bytes(serialization.Encoding.DER, spki)):
        raise TLSError(f"--cert-path {directory}: {KEY_FILE} does not belong to {CERT_FILE}")
    return KeyPair(key_pem, cert_pem)


def _fingerprint(directory: Path) -> tuple[object, ...]:
    """What changes when either file is replaced, also through Kubernetes' ..data symlink swap."""
    out: list[object] = []
    for name in (CERT_FILE, KEY_FILE):
        path = directory / name
        try:
            st = path.stat()
            out += [os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size]
        except OSError:
            out.append(None)
    return tuple(out)


class CertReloader:
    """The certificate fetcher of grpc.dynamic_ssl_server_credentials (runs on gRPC's threads)."""

    def __init__(self, directory: Path, check_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.check_interval_s = check_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self.pair = load_pair(directory)
        self._seen = _fingerprint(directory)
        self._next_check = clock() + check_interval_s
        self.reloads = 0

    def initial(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.pair.key_pem, self.pair.cert_pem)])

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """None keeps the current certificate (gRPC's contract); a config switches to it."""
        pair = self.poll()
        if pair is None:
            return None
        return grpc.ssl_server_certificate_configuration([(pair.key_pem, pair.cert_pem)])

    def poll(self) -> KeyPair | None:
        """The new pair when the files changed to a valid one since the last look (looked at
        most every check_interval_s), else None."""
        now = self._clock()
        with self._lock:
            if now < self._next_check:
                return None
            self._next_check = now + self.check_interval_s
            seen = _fingerprint(self.directory)
            if seen == self._seen:
                return None
            try:
                pair = load_pair(self.directory)
            except TLSError as e:
                # Mid-rotation (one file new, one old) or broken: keep serving the old pair.
                log.warning("certificate reload skipped, keeping the current one: %s", e)
                return None
            except Exception:  # e.g. an unsupported key type: never fail the handshake for it
                log.exception("certificate reload failed, keeping the current one")
                return None
            self._seen = seen
            if pair == self.pair:
                return None
            self.pair = pair
            self.reloads += 1
        log.info("serving the rotated certificate from %s", self.directory)
        return pair


def ssl_context_for(pair: KeyPair) -> ssl.SSLContext:
    """A server context for the EPP's own HTTP/2 server: TLS 1.2+, ALPN h2 (what gRPC
    clients ask for), the pair loaded through a private temporary directory (the ssl module
    reads keys from files only)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory(prefix="epp-tls-") as tmp:  # mode 0700
        write_pair(pair, Path(tmp))
        ctx.load_cert_chain(Path(tmp) / CERT_FILE, Path(tmp) / KEY_FILE)
    return ctx


class ReloadingSSLContext:
    """TLS for epp/server/h2grpc.py with the same reload semantics as CertReloader on grpcio:
    on each new handshake (the SNI callback runs for every ClientHello) the mounted pair is
    looked at, at most every check_interval_s, and a changed, matching pair is switched to;
    open connections keep their session."""

    def __init__(self, pair: KeyPair, reloader: CertReloader | None = None) -> None:
        self.base = ssl_context_for(pair)
        self.current = self.base
        self.reloader = reloader
        if reloader is not None:
            self.base.sni_callback = self._on_client_hello

    def _on_client_hello(self, sslobj: ssl.SSLObject, server_name: str | None,
                         ctx: ssl.SSLContext) -> int | None:
        assert self.reloader is not None
        try:
            pair = self.reloader.poll()
            if pair is not None:
                self.current = ssl_context_for(pair)
        except Exception:  # never fail a handshake for a reload: keep the current pair
            log.exception("certificate reload failed, keeping the current one")
        if self.current is not self.base:
            sslobj.context = self.current
        return None


def serving_pair(opts: TLSOptions) -> tuple[KeyPair, CertReloader | None]:
    """The pair to serve at start, and the reloader when one watches --cert-path (both
    servers of the ext_proc port build their TLS from this)."""
    if opts.cert_path is None:
        log.info("secure serving with a self-signed certificate generated at start "
                 "(mount a kubernetes.io/tls Secret and pass --cert-path to use your own)")
        return self_signed_pair(), None
    if not opts.reload:
        return load_pair(opts.cert_path), None
    reloader = CertReloader(opts.cert_path, opts.check_interval_s)
    return reloader.pair, reloader


def server_ssl_context(opts: TLSOptions) -> tuple[ReloadingSSLContext, CertReloader | None]:
    """server_credentials' counterpart for the EPP's own HTTP/2 server."""
    pair, reloader = serving_pair(opts)
    return ReloadingSSLContext(pair, reloader), reloader


def server_credentials(opts: TLSOptions) -> tuple[grpc.ServerCredentials, CertReloader | None]:
    """The credentials for add_secure_port, and the reloader when one watches --cert-path."""
    pair, reloader = serving_pair(opts)
    if reloader is None:
        return grpc.ssl_server_credentials([(pair.key_pem, pair.cert_pem)]), None
    creds = grpc.dynamic_ssl_server_credentials(reloader.initial(), reloader.fetch,
                                                require_client_authentication=False)
    return creds, reloader
