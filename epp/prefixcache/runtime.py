"""The shared KV-events runtime: index + subscriber manager + hash checker.

One runtime per process, kept in `PluginContext.services[SERVICE_KEY]` so that every plugin
instance (several precise scorers, several profiles) reads the same index and only one set
of ZMQ subscribers runs. The server starts and stops it through
`epp.prefixcache.start_services(services)` / `stop_services(services)`; if nobody does, the
scorer starts it itself on the first scheduling cycle that runs inside an event loop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from epp.datastore.datastore import Datastore
from epp.prefixcache.block_hash import BlockHasher
from epp.prefixcache.config import IndexSettings, PreciseSettings
from epp.prefixcache.hash_check import HashSettingsChecker
from epp.prefixcache.index import InMemoryKVBlockIndex, KVBlockIndex, RedisKVBlockIndex
from epp.prefixcache.manager import KVEventsManager
from epp.prefixcache.metrics import KVEventsCollector

log = logging.getLogger(__name__)

SERVICE_KEY = "kvevents.runtime"
REGISTRY_SERVICE_KEY = "metrics.registry"  # optional CollectorRegistry chosen by the server


def build_index(settings: IndexSettings) -> KVBlockIndex:
    if settings.backend == "redis":
        assert settings.redis is not None
        r = settings.redis
        # valkey:// URLs speak the Redis protocol; redis-py only knows the redis schemes.
        url = r.address.replace("valkeys://", "rediss://", 1).replace("valkey://", "redis://", 1)
        return RedisKVBlockIndex(url, key_prefix=r.key_prefix, block_ttl_seconds=r.block_ttl_seconds)
    m = settings.in_memory
    return InMemoryKVBlockIndex(max_blocks=m.size, max_pods_per_block=m.pod_cache_size)


@dataclass(eq=False)
class KVEventsRuntime:
    settings: PreciseSettings
    index: KVBlockIndex
    manager: KVEventsManager
    checker: HashSettingsChecker | None
    registry: CollectorRegistry | None = None
    _collector: KVEventsCollector | None = None
    _start_task: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    def create(cls, datastore: Datastore, settings: PreciseSettings,
               registry: CollectorRegistry | None = REGISTRY) -> KVEventsRuntime:
        tp = settings.token_processor
        checker = None
        if settings.hash_check.enabled:
            hc = settings.hash_check
            checker = HashSettingsChecker(
                BlockHasher(tp.hash_algo, tp.block_size, tp.seed()),
                window=hc.window, threshold=hc.threshold, min_samples=hc.min_samples,
            )
        index = build_index(settings.index)
        manager = KVEventsManager(datastore, index, settings.kv_events, checker)
        runtime = cls(settings, index, manager, checker, registry)
        if registry is not None:
            runtime._collector = KVEventsCollector(manager)
            registry.register(runtime._collector)
        return runtime

    async def start(self) -> None:
        await self.manager.start()

    async def stop(self) -> None:
        if self._start_task is not None:
            # A lazy start still in flight would otherwise open sockets after we stopped.
            await asyncio.gather(self._start_task, return_exceptions=True)
            self._start_task = None
        await self.manager.stop()
        await self.index.close()
        if self.registry is not None and self._collector is not None:
            self.registry.unregister(self._collector)
            self._collector = None

    def start_soon(self) -> None:
        """Start from synchronous code if an event loop is running here (else do nothing)."""
        if self.manager.started or self._start_task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._start_task = loop.create_task(self.start())
        log.info("kv-events: started lazily on first use; call epp.prefixcache.start_services() "
                 "at server startup to subscribe before the first request")


def get_or_create_runtime(datastore: Datastore, services: dict[str, Any],
                          settings: PreciseSettings, where: str) -> KVEventsRuntime:
    """The process' runtime; a second plugin instance must agree on the index and events."""
    runtime: KVEventsRuntime | None = services.get(SERVICE_KEY)
    if runtime is None:
        registry = services.get(REGISTRY_SERVICE_KEY, REGISTRY)
        runtime = KVEventsRuntime.create(datastore, settings, registry)
        services[SERVICE_KEY] = runtime
        return runtime
    if runtime.settings.index != settings.index or runtime.settings.kv_events != settings.kv_events:
        raise ValueError(
            f"{where}: indexerConfig.kvBlockIndexConfig and kvEventsConfig must be the same for "
            "every precise-prefix-cache-scorer instance (they share one index and one set of "
            "subscribers)"
        )
    return runtime
