"""Which prefill targets the sidecar may send a request to (SSRF guard).

The prefill target arrives in a request header. Through the gateway only the EPP can set it
(Envoy and the EPP remove client-sent copies), but the sidecar's port is reachable from
anywhere in the cluster network, so the sidecar checks every target itself: it must be a
member of the InferencePool, learned from the same source the EPP uses (the local
endpoints file, or the InferencePool and its pods in Kubernetes), or an entry of an
explicit list. Without either, every remote prefill target is refused.

llm-d's sidecar does the same behind `-enable-ssrf-protection` (off by default) and
matches hosts only; here pool members match by host:port, and host-only entries are
accepted in the explicit list for compatibility.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from epp.datastore.datastore import Datastore

# host:port, [v6]:port or a bare host; nothing that could add a path, userinfo or query to the
# URL the sidecar builds from it.
_TARGET_RE = re.compile(r"(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?|[0-9a-f.]*:[0-9a-f.]*:[0-9a-f:.]*")


def host_of(target: str) -> str:
    """The host part of `host:port`, `[v6]:port`, `host` or a bare IPv6 address."""
    if target.startswith("["):
        return target[1:].split("]", 1)[0]
    return target.rsplit(":", 1)[0] if target.count(":") == 1 else target


def _has_port(target: str) -> bool:
    if target.startswith("["):
        return "]:" in target
    return target.count(":") == 1


class PrefillAllowlist:
    """Pool members (from a Datastore kept current by an endpoint source) plus explicit
    entries: `host:port` matches exactly, a bare `host` matches any port on it."""

    def __init__(self, explicit: Iterable[str] = (), pool: Datastore | None = None) -> None:
        entries = [e.strip().lower() for e in explicit if e.strip()]
        self.targets = frozenset(e for e in entries if _has_port(e))
        self.hosts = frozenset(host_of(e) for e in entries if not _has_port(e))
        self.pool = pool

    @property
    def empty(self) -> bool:
        """Nothing can ever be allowed (no pool source, no explicit entry)."""
        return self.pool is None and not self.targets and not self.hosts

    def allows(self, target: str) -> bool:
        target = target.lower()
        if not _TARGET_RE.fullmatch(target):
            return False
        if self.pool is not None and self.pool.by_hostport(target) is not None:
            return True
        return target in self.targets or (bool(self.hosts) and host_of(target) in self.hosts)

    def describe(self) -> str:
        parts = []
        if self.pool is not None:
            parts.append(f"pool members ({len(self.pool.endpoints())} now)")
        if self.targets or self.hosts:
            parts.append(", ".join(sorted(self.targets | self.hosts)))
        return "; ".join(parts) or "nothing (no pool source, no --allowed-prefill-targets)"
