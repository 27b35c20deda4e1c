"""`epp serve --admin-*` options (kept apart from the server so importing them does not
generate or load the protobuf stubs)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

TOKEN_ENV = "EPP_ADMIN_TOKEN"


class AdminConfigError(ValueError):
    """The admin API cannot be served as configured (message names the flag)."""


@dataclass(slots=True)
class AdminOptions:
    host: str = "127.0.0.1"
    port: int = 0  # 0 with enabled=True: any free port (tests)
    enabled: bool = False
    token: str = ""

    def validate(self) -> None:
        if not self.enabled:
            return
        if self.port < 0 or self.port > 65535:
            raise AdminConfigError(f"--admin-port must be in 0..65535, got {self.port}")
        if not is_loopback(self.host) and not self.token:
            raise AdminConfigError(
                f"--admin-host {self.host} is not a loopback address: the admin API then needs a "
                f"bearer token (--admin-token-file or ${TOKEN_ENV})")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a DNS name: may resolve anywhere
