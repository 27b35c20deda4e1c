"""KV-event driven ("precise") prefix-cache routing: vLLM KV events -> block index -> scorer.

Server integration (the scorer creates the runtime in `PluginContext.services` when the
config is loaded; these hooks bind its ZMQ sockets to the server's event loop):

    await epp.prefixcache.start_services(ctx.services)   # after the config is loaded
    ...
    await epp.prefixcache.stop_services(ctx.services)    # on shutdown

Both are no-ops when no precise-prefix-cache-scorer is configured. See docs/kv-events.md.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from epp.prefixcache.runtime import SERVICE_KEY, KVEventsRuntime


async def start_services(services: MutableMapping[str, Any]) -> None:
    """Start the KV-event subscribers (needs the running event loop)."""
    runtime: KVEventsRuntime | None = services.get(SERVICE_KEY)
    if runtime is not None:
        await runtime.start()


async def stop_services(services: MutableMapping[str, Any]) -> None:
    """Stop the subscribers, close the index and unregister the metrics."""
    runtime: KVEventsRuntime | None = services.pop(SERVICE_KEY, None)
    if runtime is not None:
        await runtime.stop()


__all__ = ["SERVICE_KEY", "KVEventsRuntime", "start_services", "stop_services"]
