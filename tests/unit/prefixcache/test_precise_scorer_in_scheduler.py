"""The precise scorer wired by the config loader, combined with load scorers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from epp.config.loader import load_scheduler_config
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import Endpoint
from epp.scheduling.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
from epp.scheduling.registry import PluginContext
from epp.scheduling.types import LLMRequest
from epp.sim.kv_cache import PrefixCachingBlockPool

from .kv_fixtures import payload, serve

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


def test_cached_prefix_outweighs_a_shorter_queue(tmp_path: Path) -> None:
    (tmp_path / "epp.yaml").write_text(CONFIG)
    ds = Datastore()
    eps = [ds.upsert_endpoint(Endpoint(name=f"pod-{i}", address="127.0.0.1", port=8000 + i)) for i in range(2)]
    ctx = PluginContext(datastore=ds, services={"metrics.registry": CollectorRegistry()})
    config = load_scheduler_config(tmp_path / "epp.yaml", ctx)
    scorer = config.plugins["precise"]
    assert isinstance(scorer, PrecisePrefixCacheScorer)
    eps[0].metrics.waiting_queue_size = 0
    eps[1].metrics.waiting_queue_size = 5
    prompt = " ".join(f"doc{i}" for i in range(300))
    request = LLMRequest(request_id="r1", model="m", target_model="m", prompt=prompt, body={"prompt": prompt})

    result, _ = config.scheduler.schedule(request, eps)
    assert result.primary is not None and result.primary.targets[0] is eps[0]  # nothing cached: queue wins

    pool = PrefixCachingBlockPool(num_blocks=256, block_size=16)
    serve(pool, scorer.hasher, scorer.token_ids(request))
    for i, ep in enumerate(eps):
        events = pool.drain_events() if i == 1 else []
        asyncio.run(scorer.runtime.manager.local_stream(ep.key).handle(0, payload(events)))
    result, state = config.scheduler.schedule(request, eps)
    assert result.primary is not None and result.primary.targets[0] is eps[1]
    assert state["precise.cached-tokens"][eps[1].key] == state["precise.prompt-tokens"] // 16 * 16
    config.scheduler.pre_request(state, request, result)
    config.scheduler.post_response(request, eps[1], {"status": 200, "cached_tokens": 0})
