"""Soak: unique prompts through the ext_proc handler (request parser), the tokenizer and the
scheduler, in process. Every per-text cache must be bounded: after a warm-up that fills
them, the process RSS stays flat within 10%.

CI runs a short version (SOAK_PROMPTS, a few seconds) that still asserts; the issue's full
run of 100,000 unique prompts is opt-in:

    EPP_SOAK_PROMPTS=100000 .venv/bin/python -m pytest tests/unit/server/test_soak_memory.py -s

The caches are sized down (tokenizer pieces and vocabulary, the pods' KV blocks that size
the prefix LRUs, the simple prompt tokenizer's message cache) so a short run fills them during the
warm-up; the same code bounds them at their production sizes.
"""

from __future__ import annotations

import gc
import json
import os
import random
import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from prometheus_client import CollectorRegistry

from epp.config.loader import load_scheduler_config
from epp.datastore import Datastore, Endpoint
from epp.prefixcache.runtime import SERVICE_KEY, KVEventsRuntime
from epp.scheduling.registry import PluginContext
from epp.server.extproc import ExtProcHandler
from epp.tokenization import simple
from epp.tokenization.simple import SimplePromptTokenizer
from epp.tokenization.tokenizer import SimpleTokenizer

SOAK_PROMPTS = int(os.environ.get("EPP_SOAK_PROMPTS", "3000"))
WARMUP_PROMPTS = min(3000, SOAK_PROMPTS // 3)  # fills every sized-down cache
TOKENIZER_CACHE = 4096
TOKENIZER_VOCAB = 4096  # id -> piece (for decode) is bounded by the vocabulary size
POD_KV_BLOCKS = 300  # autoTune sizes the prefix LRUs from the pods' num_gpu_blocks
SEGMENT_CACHE = 256  # the simple prompt tokenizer's per-message token cache (4096 in production)
MODEL = "m"

CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
  parameters: {blockSize: 64, maxPrefixBlocksToMatch: 64}
- type: precise-prefix-cache-scorer
  name: precise
  parameters:
    tokenizer: simple
    tokenProcessorConfig: {blockSize: 16}
- type: assumed-load
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: precise, weight: 3}
  - {pluginRef: max-score-picker}
"""


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=rng.randint(3, 6)))


def _request(i: int, rng: random.Random) -> list[pb.ProcessingRequest]:
    # Unique words: every prompt brings tokenizer pieces and prefix blocks never seen before.
    prompt = f"Request {i}: " + " ".join(_word(rng) for _ in range(60))
    chat = i % 2 == 0
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 8}
    if chat:
        body["messages"] = [{"role": "system", "content": "You are terse."},
                            {"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    hm = base_pb2.HeaderMap()
    path = "/v1/chat/completions" if chat else "/v1/completions"
    for k, v in {":method": "POST", ":path": path, "x-request-id": f"soak-{i}"}.items():
        hm.headers.add(key=k, raw_value=v.encode())
    status = base_pb2.HeaderMap()
    status.headers.add(key=":status", raw_value=b"200")
    return [pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hm)),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=json.dumps(body).encode(), end_of_stream=True)),
            pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=status))]


async def _drive(handler: ExtProcHandler, msgs: list[pb.ProcessingRequest]) -> int:
    async def gen() -> AsyncIterator[pb.ProcessingRequest]:
        for m in msgs:
            yield m

    n = 0
    async for raw in handler.process(gen(), None):
        n += len(raw)
    return n


def _setup(tmp_path: Path) -> tuple[ExtProcHandler, SimpleTokenizer, KVEventsRuntime]:
    (tmp_path / "epp.yaml").write_text(CONFIG)
    ds = Datastore()
    for i in range(4):
        ep = ds.upsert_endpoint(Endpoint(name=f"pod-{i}", address="127.0.0.1", port=8000 + i))
        ep.metrics.num_gpu_blocks = POD_KV_BLOCKS
    tokenizer = SimpleTokenizer(vocab_size=TOKENIZER_VOCAB, max_cached_pieces=TOKENIZER_CACHE)
    prompt_tokenizer = SimplePromptTokenizer(warn=False)
    prompt_tokenizer.tokenizer = tokenizer
    ctx = PluginContext(datastore=ds, services={"metrics.registry": CollectorRegistry(),
                                                "tokenizer/simple": prompt_tokenizer})
    scheduler = load_scheduler_config(tmp_path / "epp.yaml", ctx).scheduler
    return ExtProcHandler(ds, lambda: scheduler), tokenizer, ctx.services[SERVICE_KEY]


@pytest.mark.timeout(max(300, SOAK_PROMPTS // 40))  # the opt-in long run needs longer
async def test_rss_stays_flat_over_unique_prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simple, "SEGMENT_CACHE_ENTRIES", SEGMENT_CACHE)
    handler, tokenizer, kv_runtime = _setup(tmp_path)
    try:
        await _soak(handler, tokenizer)
    finally:
        await kv_runtime.stop()  # the precise scorer's KV-event subscribers start lazily


async def _soak(handler: ExtProcHandler, tokenizer: SimpleTokenizer) -> None:
    ds = handler.datastore
    rng = random.Random(7)

    for i in range(WARMUP_PROMPTS):
        assert await _drive(handler, _request(i, rng)) > 0
    gc.collect()
    warm = _rss_bytes()
    for i in range(WARMUP_PROMPTS, SOAK_PROMPTS):
        await _drive(handler, _request(i, rng))
    gc.collect()
    end = _rss_bytes()

    print(f"\nsoak: {SOAK_PROMPTS} unique prompts, RSS after warm-up {warm / 2**20:.1f} MiB, "
          f"at the end {end / 2**20:.1f} MiB ({(end - warm) / warm:+.1%})")
    assert tokenizer.cached_pieces <= TOKENIZER_CACHE
    assert all(ep.inflight == 0 for ep in ds.endpoints())
    assert end <= warm * 1.10, f"RSS grew from {warm / 2**20:.1f} MiB to {end / 2**20:.1f} MiB"
