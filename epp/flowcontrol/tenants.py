"""Tenants and API keys.

The keys file (or a mounted Kubernetes Secret: a directory whose files are read and merged)
maps API keys to tenants:

    tenants:
    - name: team-a
      objective: llama3-8b-instruct     # used when the request names no objective
      requestsPerMinute: 60             # 0/absent: unlimited
      tokensPerMinute: 20000
      keys:
      - sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
      - sk-local-team-a                 # plain keys are hashed at load and never kept

Keys are kept only as SHA-256 digests. A presented key (`Authorization: Bearer <key>` or
`x-api-key`) is hashed, the candidates sharing its digest's first 8 bytes are found in a dict
and each is compared in full with hmac.compare_digest: the client cannot steer a digest, so
neither step's timing reveals anything about the stored keys. A missing and a wrong key get
the same 401. The file is polled and reloaded on change
(a broken edit is logged and the previous keys kept).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from epp.headers import FAIRNESS_ID, OBJECTIVE
from epp.server.errors import RequestError

log = logging.getLogger("epp.flowcontrol.tenants")

TENANT_HEADER = "x-gateway-inference-tenant"  # set by the EPP (a client-sent value is replaced)
_TENANT_KEYS = ("name", "objective", "requestsPerMinute", "tokensPerMinute", "keys")


class KeysFileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    objective: str = ""
    requests_per_minute: int = 0
    tokens_per_minute: int = 0


@dataclass(slots=True)
class KeyTable:
    # First 8 bytes of the key's digest -> (full digest, tenant) entries.
    by_prefix: dict[bytes, list[tuple[bytes, Tenant]]] = field(default_factory=dict)
    tenants: dict[str, Tenant] = field(default_factory=dict)

    def add(self, digest: bytes, tenant: Tenant) -> bool:
        entries = self.by_prefix.setdefault(digest[:8], [])
        if any(d == digest for d, _ in entries):
            return False
        entries.append((digest, tenant))
        return True

    def find(self, digest: bytes) -> Tenant | None:
        found = None
        # Every candidate is compared in full, in constant time, without stopping early.
        for stored, tenant in self.by_prefix.get(digest[:8], ()):
            if hmac.compare_digest(stored, digest):
                found = tenant
        return found


def hash_key(key: str) -> str:
    """The form to store in the keys file: `sha256:<hex>`."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _unauthorized() -> RequestError:
    # One answer for a missing and a wrong key: nothing tells which keys exist.
    return RequestError(401, "Invalid or missing API key. Pass it as 'Authorization: Bearer <key>'.",
                        "invalid_api_key")


def parse_keys(text: str, source: str, table: KeyTable | None = None) -> KeyTable:
    table = table or KeyTable()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise KeysFileError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(raw, dict) or set(raw) - {"tenants"}:
        got = list(raw) if isinstance(raw, dict) else raw
        raise KeysFileError(f"{source}: expected a mapping with 'tenants' only, got {got!r}")
    entries = raw.get("tenants") or []
    if not isinstance(entries, list):
        raise KeysFileError(f"{source}: field 'tenants' must be a list")
    for i, entry in enumerate(entries):
        where = f"{source}: tenants[{i}]"
        if not isinstance(entry, dict):
            raise KeysFileError(f"{where}: must be a mapping")
        for key in entry:
            if key not in _TENANT_KEYS:
                raise KeysFileError(f"{where}: unknown field {key!r} (allowed: {', '.join(_TENANT_KEYS)})")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise KeysFileError(f"{where}.name: required, a non-empty string")
        if name in table.tenants:
            raise KeysFileError(f"{where}.name: tenant {name!r} defined twice")
        limits = []
        for fname in ("requestsPerMinute", "tokensPerMinute"):
            v = entry.get(fname, 0)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise KeysFileError(f"{where}.{fname}: must be an integer >= 0, got {v!r}")
            limits.append(v)
        objective = entry.get("objective", "")
        if not isinstance(objective, str):
            raise KeysFileError(f"{where}.objective: must be a string")
        tenant = Tenant(name, objective, limits[0], limits[1])
        table.tenants[name] = tenant
        keys = entry.get("keys") or []
        if not isinstance(keys, list) or not keys:
            raise KeysFileError(f"{where}.keys: a non-empty list of keys (sha256:<hex> or plain)")
        for j, k in enumerate(keys):
            if not isinstance(k, str) or not k:
                raise KeysFileError(f"{where}.keys[{j}]: must be a non-empty string")
            if k.startswith("sha256:"):
                try:
                    digest = bytes.fromhex(k[7:])
                except ValueError:
                    digest = b""
                if len(digest) != 32:
                    raise KeysFileError(f"{where}.keys[{j}]: 'sha256:' must be followed by 64 hex digits")
            else:
                digest = hashlib.sha256(k.encode()).digest()
            if not table.add(digest, tenant):
                raise KeysFileError(f"{where}.keys[{j}]: the same key is listed twice")
    return table


def load_keys(path: Path) -> KeyTable:
    """A keys file, or every regular file of a directory (a mounted Secret)."""
    table = KeyTable()
    files = [path] if not path.is_dir() else sorted(
        p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
    if not files:
        raise KeysFileError(f"{path}: no keys file found")
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except OSError as e:
            raise KeysFileError(f"{f}: cannot read: {e.strerror or e}") from None
        parse_keys(text, str(f), table)
    return table


class ApiKeyAuth:
    """Checks the request's API key; on success names its tenant in the request headers."""

    def __init__(self, path: Path, poll_interval_s: float = 1.0) -> None:
        self.path = path
        self.poll_interval_s = poll_interval_s
        self.table = load_keys(path)
        self._signature = self._stat()
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0

    def authenticate(self, headers: dict[str, str]) -> Tenant:
        """Raises RequestError(401) unless a known key is presented; sets the tenant, fairness
        ID and (when the request names none) objective headers."""
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
        if not key:
            raise _unauthorized()
        digest = hashlib.sha256(key.encode()).digest()
        tenant = self.table.find(digest)
        if tenant is None:
            raise _unauthorized()
        headers[TENANT_HEADER] = tenant.name
        # The headers were canonicalized when read (epp.headers), so setting the current names
        # replaces whatever the client sent under either name.
        headers[FAIRNESS_ID] = tenant.name
        if tenant.objective and not headers.get(OBJECTIVE):
            headers[OBJECTIVE] = tenant.objective
        return tenant

    # --- reload -----------------------------------------------------------------------------
    def _stat(self) -> tuple[tuple[str, float, int], ...]:
        paths = [self.path] if not self.path.is_dir() else sorted(self.path.iterdir())
        out = []
        for p in paths:
            try:
                st = p.stat()  # follows the Secret's ..data symlinks
            except OSError:
                continue
            out.append((str(p), st.st_mtime, st.st_size))
        return tuple(out)

    def reload_if_changed(self) -> bool:
        sig = self._stat()
        if sig == self._signature:
            return False
        self._signature = sig
        try:
            self.table = load_keys(self.path)
        except KeysFileError as e:
            log.error("API keys reload failed, keeping the previous keys: %s", e)
            return False
        self.reloads += 1
        log.info("API keys reloaded from %s: %d tenants", self.path, len(self.table.tenants))
        return True

    async def start(self) -> None:
        async def poll() -> None:
            while True:
                await asyncio.sleep(self.poll_interval_s)
                self.reload_if_changed()

        self._task = asyncio.create_task(poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def tenant_of(request_headers: dict[str, Any]) -> str:
    return str(request_headers.get(TENANT_HEADER, ""))
