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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from epp.prefixcache.runtime import SERVICE_KEY, KVEventsRuntime


def __getattr__(name: str) -> Any:
    # Lazy, so that importing a light submodule (block_hash, which the simulator uses) does
    # not pull in the runtime's index, datastore and tracing on every simulated pod's start.
    if name in ("SERVICE_KEY", "KVEventsRuntime"):
        from epp.prefixcache import runtime
        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def start_services(services: MutableMapping[str, Any]) -> None:
    """Start the KV-event subscribers (needs the running event loop)."""
    from epp.prefixcache.runtime import SERVICE_KEY
    runtime: KVEventsRuntime | None = services.get(SERVICE_KEY)
    if runtime is not None:
        await runtime.start()


async def stop_services(services: MutableMapping[str, Any]) -> None:
    """Stop the subscribers, close the index and unregister the metrics."""
    from epp.prefixcache.runtime import SERVICE_KEY
    runtime: KVEventsRuntime | None = services.pop(SERVICE_KEY, None)
    if runtime is not None:
        await runtime.stop()


__all__ = ["SERVICE_KEY", "KVEventsRuntime", "start_services", "stop_services"]
