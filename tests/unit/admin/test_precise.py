"""Explain and GetPool with the KV-event ("precise") prefix scorer: the prefix match per pod
comes from the KV-block index the pods' events filled, and GetPool counts the blocks it holds
per pod."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from epp.admin.feed import DecisionExplainer
from epp.admin.proto import pb
from epp.admin.service import AdminService, AdminState
from epp.config.loader import load_scheduler_config
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.observability.decisions import DecisionBus
from epp.prefixcache import stop_services
from epp.scheduling.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from epp.scheduling.registry import PluginContext
from epp.scheduling.types import LLMRequest
from epp.sim.kv_cache import PrefixCachingBlockPool
from tests.unit.prefixcache.kv_fixtures import payload, serve

CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: precise-prefix-cache-scorer
  name: precise
  parameters:
    tokenProcessorConfig: {blockSize: 16}
    kvEventsConfig: {topicFilter: "kv@", concurrency: 4}
- type: queue-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: precise, weight: 3}
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: max-score-picker}
"""


async def test_precise_prefix_match_and_index_coverage(tmp_path: Path) -> None:
    (tmp_path / "epp.yaml").write_text(CONFIG)
    ds = Datastore()
    eps = [ds.upsert_endpoint(Endpoint(name=f"pod-{i}", address="127.0.0.1", port=8000 + i)) for i in range(2)]
    eps[1].metrics.waiting_queue_size = 5
    eps[1].metrics.num_gpu_blocks = 256
    ctx = PluginContext(datastore=ds, services={"metrics.registry": CollectorRegistry()})
    config = load_scheduler_config(tmp_path / "epp.yaml", ctx)
    scorer = config.plugins["precise"]
    assert isinstance(scorer, PrecisePrefixCacheScorer)
    prompt = " ".join(f"doc{i}" for i in range(300))
    request = LLMRequest(request_id="r1", model="m", target_model="m", prompt=prompt, body={"prompt": prompt})
    try:
        # pod-1 serves the prompt: its KV events reach the index, as from a real vLLM pod.
        pool = PrefixCachingBlockPool(num_blocks=256, block_size=16)
        serve(pool, scorer.hasher, scorer.token_ids(request))
        await scorer.runtime.manager.local_stream(eps[1].key).handle(0, payload(pool.drain_events()))
        await _check(ds, ctx, config, request, prompt)
    finally:
        # The scorer started its KV-event subscribers lazily in this loop: stop them, or their
        # ZMQ sockets keep the interpreter from exiting.
        await stop_services(ctx.services)


async def _check(ds: Datastore, ctx: PluginContext, config: Any, request: LLMRequest, prompt: str) -> None:
    eps = ds.endpoints()
    service = AdminService(AdminState(ds, lambda: config.scheduler, DecisionBus(), DecisionExplainer(),
                                      services=ctx.services))
    d = service.explain(pb.ExplainRequest(body=json.dumps({"model": "m", "prompt": prompt}).encode()))
    by_pod = {e.endpoint: e for e in d.profiles[0].endpoints}
    assert d.target == "default/pod-1"  # the cached prefix outweighs its queue of 5
    assert by_pod["default/pod-1"].prefix_match_blocks == by_pod["default/pod-1"].prefix_total_blocks > 0
    assert by_pod["default/pod-0"].prefix_match_blocks == 0
    # Same answer as the real scheduler on the same state.
    real, _ = config.scheduler.schedule(request, eps)
    assert real.primary is not None and real.primary.targets[0].key == d.target

    snap = service.pool_snapshot()
    kv = {c.endpoint: c for c in snap.index_coverage if c.source == "kv-events"}
    blocks = by_pod["default/pod-1"].prefix_total_blocks
    assert kv["default/pod-1"].blocks == blocks and kv["default/pod-1"].capacity == 256
    assert kv["default/pod-0"].blocks == 0
