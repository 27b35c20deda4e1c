from __future__ import annotations

import pytest

from epp.prefixcache.config import parse_settings
from epp.scheduling.registry import ConfigError, parse_params, plugin_class

LLMD_PARAMS = {
    "tokenProcessorConfig": {"blockSize": 64, "hashSeed": "42"},
    "indexerConfig": {
        "prefixStoreConfig": {"blockSize": 16},
        "tokenizersPoolConfig": {"modelName": "simple", "workersCount": 8},
        "kvBlockIndexConfig": {"enableMetrics": True, "inMemoryConfig": {"size": 5000, "podCacheSize": 4}},
    },
    "kvEventsConfig": {"topicFilter": "kv@", "concurrency": 4, "discoverPods": True,
                       "podDiscoveryConfig": {"socketPort": 6000, "podLabelSelector": "app=vllm"}},
}


def test_llmd_shaped_config_loads() -> None:
    params = parse_params(plugin_class("precise-prefix-cache-scorer").Params, LLMD_PARAMS, "f.yaml: p")
    s = params.settings()
    assert s.token_processor.block_size == 64 and s.token_processor.seed() == "42"
    assert s.index.backend == "memory" and s.index.in_memory.size == 5000
    assert s.index.in_memory.pod_cache_size == 4
    assert s.kv_events.topic_filter == "kv@" and s.kv_events.socket_port == 6000
    assert s.tokenizer == "simple"


def test_integer_seed_and_redis_backend() -> None:
    s = parse_settings({"hashSeed": 7}, {"kvBlockIndexConfig": {"redisConfig": {"address": "valkey://h:1"}}},
                       {"zmqEndpoint": "tcp://*:5557", "discoverPods": False})
    assert s.token_processor.seed() == "7"
    assert s.index.backend == "redis" and s.index.redis is not None
    assert s.kv_events.zmq_endpoint == "tcp://*:5557"


@pytest.mark.parametrize(("params", "fragment"), [
    ({"kvEventsConfig": {"bogus": 1}}, "kvEventsConfig: unknown parameter 'bogus'"),
    ({"tokenProcessorConfig": {"hashAlgo": "md5"}}, "hashAlgo must be one of"),
    ({"tokenProcessorConfig": {"blockSize": 0}}, "blockSize must be >= 1"),
    ({"indexerConfig": {"kvBlockIndexConfig": {"nope": {}}}}, "kvBlockIndexConfig: unknown key(s) ['nope']"),
    ({"kvEventsConfig": {"discoverPods": False}}, "discoverPods: true or a zmqEndpoint"),
    ({"kvEventsConfig": {"endpointTemplate": "tcp://{ip}:1"}}, "unknown placeholder"),
    ({"maxPrefixBlocks": 0}, "maxPrefixBlocks must be >= 1"),
    # vLLM seeds xxhash randomly per process without PYTHONHASHSEED: such a config never matches.
    ({"tokenProcessorConfig": {"hashAlgo": "xxhash"}},
     "tokenProcessorConfig: hashSeed: must be set for hashAlgo 'xxhash'"),
    ({"tokenProcessorConfig": {"hashAlgo": "xxhash_cbor"}}, "hashSeed: must be set for hashAlgo 'xxhash_cbor'"),
    ({"tokenProcessorConfig": {"baseModels": [""]}}, "baseModels must be a list of non-empty model names"),
    ({"kvEventsConfig": {"dataParallelSize": 0}}, "dataParallelSize must be in 1..1024"),
])
def test_config_errors_name_file_plugin_and_field(params: dict[str, object], fragment: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    cls = plugin_class("precise-prefix-cache-scorer")
    with pytest.raises(ConfigError) as err:
        parse_params(cls.Params, params, "sched.yaml: plugin 'precise' (precise-prefix-cache-scorer)")
    assert str(err.value).startswith("sched.yaml: plugin 'precise'")
    assert fragment in str(err.value)


def test_xxhash_with_a_seed_loads_and_int_block_hashes_is_obsolete() -> None:
    s = parse_settings({"hashAlgo": "xxhash", "hashSeed": "42", "intBlockHashes": False,
                        "baseModels": ["meta-llama/Llama-3.1-8B"]}, None, {"dataParallelSize": 4})
    assert s.token_processor.hash_algo == "xxhash" and s.token_processor.seed() == "42"
    assert s.token_processor.base_models == ["meta-llama/Llama-3.1-8B"]
    assert s.kv_events.data_parallel_size == 4
