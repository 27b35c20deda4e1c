"""Settings of the KV-events subsystem, parsed from llm-d-shaped plugin parameters.

The `precise-prefix-cache-scorer` parameters follow llm-d-inference-scheduler's shape so an
llm-d config carries over:

    tokenProcessorConfig: {blockSize, hashSeed, hashAlgo*, baseModels*}
    indexerConfig:
      kvBlockIndexConfig: {inMemoryConfig: {size, podCacheSize}, redisConfig: {address, ...}}
      tokenizersPoolConfig: {modelName}          # here: "simple" or a tokenizer.json path
    kvEventsConfig: {zmqEndpoint, topicFilter, discoverPods,
                     podDiscoveryConfig: {socketPort}, dataParallelSize*, endpointTemplate*,
                     replayPort*, ...}

(* = our additions.) llm-d keys we accept but do not implement (tokenizer worker pools,
prefix store, cost-aware index, concurrency, ...) are listed in `IGNORED_KEYS`, ignored with a
log line, so a copied llm-d config loads; any other unknown key is a config error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from epp.prefixcache.block_hash import HASH_ALGOS, UnreproducibleSeedError, resolve_seed
from epp.scheduling.registry import parse_params

log = logging.getLogger(__name__)

DEFAULT_SOCKET_PORT_LABEL = "kv-events.epp.llm-d.ai/port"
DEFAULT_REPLAY_PORT_LABEL = "kv-events.epp.llm-d.ai/replay-port"
DEFAULT_DP_SIZE_LABEL = "kv-events.epp.llm-d.ai/data-parallel-size"
MAX_DATA_PARALLEL_SIZE = 1024


@dataclass(slots=True)
class TokenProcessorSettings:
    """How the EPP turns a prompt into vLLM block hashes; must equal the pods' settings."""

    block_size: int = 16  # vLLM --block-size
    hash_seed: str | int = ""  # PYTHONHASHSEED of the pods; "" = the EPP's env, else vLLM's default
    hash_algo: str = "sha256"  # vLLM --prefix-caching-hash-algo
    # The pods' base served-model names. A request for any other model is a LoRA request and
    # vLLM adds the adapter name (the request's model) to every block's extra keys. Empty:
    # a model is taken for an adapter once a pod reported it (KV events' lora_name or the
    # lora_requests_info metric), remembered from then on.
    base_models: list[str] = field(default_factory=list)

    def seed(self) -> str | None:
        """The seed for BlockHasher (None: $PYTHONHASHSEED, else vLLM's fixed default)."""
        return str(self.hash_seed) if self.hash_seed != "" else None

    def validate(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"blockSize must be >= 1, got {self.block_size}")
        if self.hash_algo not in HASH_ALGOS:
            raise ValueError(f"hashAlgo must be one of {list(HASH_ALGOS)}, got {self.hash_algo!r}")
        try:
            resolve_seed(self.seed(), self.hash_algo)
        except UnreproducibleSeedError as e:
            raise ValueError(f"hashSeed: must be set for hashAlgo {self.hash_algo!r}: {e}") from None
        if any(not isinstance(m, str) or not m for m in self.base_models):
            raise ValueError("baseModels must be a list of non-empty model names")


@dataclass(slots=True)
class InMemoryIndexSettings:
    size: int = 1_000_000  # max distinct block hashes (LRU)
    pod_cache_size: int = 16  # max pods remembered per block

    def validate(self) -> None:
        if self.size < 1 or self.pod_cache_size < 1:
            raise ValueError("size and podCacheSize must be >= 1")


@dataclass(slots=True)
class RedisIndexSettings:
    address: str = "redis://127.0.0.1:6379"
    backend_type: str = "redis"
    key_prefix: str = "epp:kv:"
    block_ttl_seconds: int = 0

    def validate(self) -> None:
        if not self.address:
            raise ValueError("redisConfig.address must not be empty")
        if self.block_ttl_seconds < 0:
            raise ValueError("blockTtlSeconds must be >= 0")


@dataclass(slots=True)
class IndexSettings:
    backend: Literal["memory", "redis"] = "memory"
    in_memory: InMemoryIndexSettings = field(default_factory=InMemoryIndexSettings)
    redis: RedisIndexSettings | None = None


@dataclass(slots=True)
class KVEventsSettings:
    """Where the events come from (per-pod discovery and/or one central bound socket)."""

    zmq_endpoint: str = ""  # centralized mode: bind here, pods connect (llm-d zmqEndpoint)
    topic_filter: str = ""  # ZMQ SUB prefix; vLLM's default topic is "" (llm-d uses "kv@")
    discover_pods: bool = True  # one subscriber per pool endpoint
    socket_port: int = 5557  # vLLM's default publisher port
    socket_port_label: str = DEFAULT_SOCKET_PORT_LABEL  # per-pod override of socket_port
    endpoint_template: str = "tcp://{host}:{port}"
    replay_port: int = 0  # vLLM replay_endpoint port (e.g. 5558); 0 = no replay socket
    replay_port_label: str = DEFAULT_REPLAY_PORT_LABEL  # per-pod override of replay_port
    replay_endpoint_template: str = "tcp://{host}:{replay_port}"
    # vLLM --data-parallel-size of each pod: rank r publishes on port + r (and replay port +
    # r); a pod label (data_parallel_size_label) overrides it per pod.
    data_parallel_size: int = 1
    data_parallel_size_label: str = DEFAULT_DP_SIZE_LABEL
    rcv_hwm: int = 10_000
    max_message_bytes: int = 64 * 1024 * 1024
    replay_timeout_seconds: float = 2.0
    resync_on_reconnect: bool = True

    def validate(self) -> None:
        if not self.discover_pods and not self.zmq_endpoint:
            raise ValueError("set discoverPods: true or a zmqEndpoint to bind, or no event arrives")
        for name in ("socket_port", "replay_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ValueError(f"{name} must be a TCP port, got {port}")
        if not 1 <= self.data_parallel_size <= MAX_DATA_PARALLEL_SIZE:
            raise ValueError(f"dataParallelSize must be in 1..{MAX_DATA_PARALLEL_SIZE}, "
                             f"got {self.data_parallel_size}")
        if self.rcv_hwm < 1 or self.max_message_bytes < 1024:
            raise ValueError("rcvHwm must be >= 1 and maxMessageBytes >= 1024")
        try:
            self.endpoint_template.format(host="h", address="a", port=1, name="n", namespace="ns",
                                          serving_port=2, replay_port=3)
            self.replay_endpoint_template.format(host="h", address="a", port=1, name="n",
                                                 namespace="ns", serving_port=2, replay_port=3)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"endpoint template has an unknown placeholder: {e}") from None


@dataclass(slots=True)
class HashCheckSettings:
    enabled: bool = True
    threshold: float = 0.5  # mismatch ratio that triggers the error log
    min_samples: int = 32
    window: int = 256

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.min_samples < 1 or self.window < self.min_samples:
            raise ValueError("minSamples must be >= 1 and window >= minSamples")


@dataclass(slots=True)
class PreciseSettings:
    token_processor: TokenProcessorSettings
    index: IndexSettings
    kv_events: KVEventsSettings
    tokenizer: str
    hash_check: HashCheckSettings


# llm-d keys accepted for compatibility but not implemented here (see module doc).
IGNORED_KEYS: dict[str, frozenset[str]] = {
    # speculativeIndexing here is read by the plugin itself (llm-d has had it at both levels).
    "indexerConfig": frozenset({"prefixStoreConfig", "kvCacheBackendConfigs", "speculativeIndexing",
                                "tokenProcessorConfig"}),
    "kvBlockIndexConfig": frozenset({"costAwareMemoryConfig", "enableMetrics", "metricsLoggingInterval",
                                     "valkeyConfig"}),
    "tokenizersPoolConfig": frozenset({"workersCount", "minPrefixOverlapRatio", "hf", "local", "uds",
                                       "tokenizersCacheDir"}),
    "kvEventsConfig": frozenset({"concurrency", "engineType"}),
    "podDiscoveryConfig": frozenset({"podLabelSelector", "podNamespace"}),
    "redisConfig": frozenset({"enableRDMA"}),
}


# Keys of ours that no longer do anything, accepted so that older configs still load.
OBSOLETE_KEYS: dict[str, dict[str, str]] = {
    "tokenProcessorConfig": {
        "intBlockHashes": "both forms of block hashes (ints and raw digests) are folded to 64 bits, "
                          "whatever VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES the pods use",
    },
}


def _section(raw: Any, name: str, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a mapping, got {raw!r}")
    out = dict(raw)
    for key in IGNORED_KEYS.get(name, ()):
        if key in out:
            out.pop(key)
            log.info("%s.%s is an llm-d setting this EPP does not use; ignored", where, key)
    for key, why in OBSOLETE_KEYS.get(name, {}).items():
        if key in out:
            out.pop(key)
            log.info("%s.%s is no longer needed (%s); ignored", where, key, why)
    return out


def parse_settings(
    token_processor_config: Mapping[str, Any] | None,
    indexer_config: Mapping[str, Any] | None,
    kv_events_config: Mapping[str, Any] | None,
    hash_check: Mapping[str, Any] | None = None,
    tokenizer: str = "",
) -> PreciseSettings:
    """Parse the nested llm-d-style sections; errors name the offending path."""
    indexer = _section(indexer_config, "indexerConfig", "indexerConfig")
    # Older llm-d configs nest tokenProcessorConfig under indexerConfig.
    raw_tp = token_processor_config or (indexer_config or {}).get("tokenProcessorConfig")
    tp = parse_params(TokenProcessorSettings, _section(raw_tp, "tokenProcessorConfig",
                                                       "tokenProcessorConfig"), "tokenProcessorConfig")

    block_index = _section(indexer.pop("kvBlockIndexConfig", None), "kvBlockIndexConfig",
                           "indexerConfig.kvBlockIndexConfig")
    pool = _section(indexer.pop("tokenizersPoolConfig", None), "tokenizersPoolConfig",
                    "indexerConfig.tokenizersPoolConfig")
    if indexer:
        raise ValueError(f"indexerConfig: unknown key(s) {sorted(indexer)} "
                         "(known: kvBlockIndexConfig, tokenizersPoolConfig)")
    model_name = pool.pop("modelName", "")
    if pool:
        raise ValueError(f"indexerConfig.tokenizersPoolConfig: unknown key(s) {sorted(pool)} "
                         "(known: modelName)")
    if not isinstance(model_name, str):
        raise ValueError("indexerConfig.tokenizersPoolConfig.modelName must be a string")

    in_memory_raw = block_index.pop("inMemoryConfig", None)
    redis_raw = block_index.pop("redisConfig", None)
    if block_index:
        raise ValueError(f"indexerConfig.kvBlockIndexConfig: unknown key(s) {sorted(block_index)} "
                         "(known: inMemoryConfig, redisConfig)")
    index = IndexSettings()
    if in_memory_raw is not None:
        index.in_memory = parse_params(
            InMemoryIndexSettings, _section(in_memory_raw, "inMemoryConfig", "inMemoryConfig"),
            "indexerConfig.kvBlockIndexConfig.inMemoryConfig")
    if redis_raw is not None:
        index.backend = "redis"
        index.redis = parse_params(
            RedisIndexSettings, _section(redis_raw, "redisConfig", "redisConfig"),
            "indexerConfig.kvBlockIndexConfig.redisConfig")

    events = _section(kv_events_config, "kvEventsConfig", "kvEventsConfig")
    discovery = _section(events.pop("podDiscoveryConfig", None), "podDiscoveryConfig",
                         "kvEventsConfig.podDiscoveryConfig")
    if "socketPort" in discovery:
        events["socketPort"] = discovery.pop("socketPort")
    if discovery:
        raise ValueError(f"kvEventsConfig.podDiscoveryConfig: unknown key(s) {sorted(discovery)} "
                         "(known: socketPort, podLabelSelector, podNamespace)")
    kv_events = parse_params(KVEventsSettings, events, "kvEventsConfig")
    checks = parse_params(HashCheckSettings, dict(hash_check or {}), "hashCheck")
    return PreciseSettings(
        token_processor=tp, index=index, kv_events=kv_events,
        tokenizer=tokenizer or model_name or "simple", hash_check=checks,
    )
