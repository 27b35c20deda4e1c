"""Record then replay: the real ext_proc handler routes requests (real ProcessingRequest
messages) and the TraceRecorder writes the trace; replaying it with the recorded config, the
same simulator state (idle pods at every arrival) and the recording's tie-break seed makes
every recorded pick again. A different config does not."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.config.loader import parse_scheduler_config
from epp.datastore import Datastore, Endpoint
from epp.datastore.inflight import SERVICE_KEY as INFLIGHT_KEY
from epp.datastore.inflight import InflightTracker
from epp.replay.record import RecordOptions, TraceRecorder
from epp.replay.replayer import Replayer, seed_pickers
from epp.replay.trace import read_trace
from epp.scheduling.registry import PluginContext
from epp.server.extproc import ExtProcHandler
from epp.sim.config import SimPodConfig

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: active-request-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: queue-scorer
  - pluginRef: kv-cache-utilization-scorer
  - pluginRef: active-request-scorer
  - pluginRef: max-score-picker
"""
SEED = 11


def _messages(rid: str, body: dict[str, object]) -> list[pb.ProcessingRequest]:
    hm = base_pb2.HeaderMap()
    for k, v in {":method": "POST", ":path": "/v1/completions", "x-request-id": rid}.items():
        hm.headers.add(key=k, raw_value=v.encode())
    data = json.dumps(body).encode()
    return [pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hm)),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=data[:100], end_of_stream=False)),
            pb.ProcessingRequest(request_body=pb.HttpBody(body=data[100:], end_of_stream=True))]


async def _send(handler: ExtProcHandler, msgs: list[pb.ProcessingRequest]) -> None:
    async def gen() -> AsyncIterator[pb.ProcessingRequest]:
        for m in msgs:
            yield m

    async for _ in handler.process(gen(), None):
        pass


async def _record(tmp_path: Path, with_prompts: bool = False) -> Path:
    sim = SimPodConfig()  # what a scrape of an idle simulated pod reports
    ds = Datastore()
    for i in range(4):
        ep = ds.upsert_endpoint(Endpoint(name=f"pod{i}", address="10.1.0.1", port=8000 + i))
        ep.metrics.block_size, ep.metrics.num_gpu_blocks = sim.block_size, sim.num_gpu_blocks
    ctx = PluginContext(ds, source="epp.yaml")
    tracker = InflightTracker(ds)
    ctx.services[INFLIGHT_KEY] = tracker
    cfg = parse_scheduler_config(CONFIG, ctx, "epp.yaml")
    seed_pickers(cfg, SEED)
    handler = ExtProcHandler(ds, lambda: cfg.scheduler, tracker=tracker)
    out = tmp_path / "trace"
    recorder = TraceRecorder(RecordOptions(out, flush_interval_s=60, with_prompts=with_prompts), handler.decisions, ds,
                             lambda: ("epp.yaml", CONFIG))
    await recorder.start()
    rng = random.Random(3)
    systems = [f"system prompt {g}: " + " ".join(rng.choice(("alpha", "beta", "gamma", "delta"))
                                                 for _ in range(150)) for g in range(6)]
    for i in range(48):
        prompt = systems[rng.randrange(6)] + f" question {i} " + "x" * rng.randrange(10, 300)
        # Sequential: each stream ends (in-flight released) before the next starts.
        await _send(handler, _messages(f"req-{i}", {"model": "m", "prompt": prompt,
                                                    "max_tokens": rng.randrange(4, 16)}))
    await recorder.stop()
    assert recorder.writer is not None and recorder.writer.written == 48
    return out


async def test_replay_with_the_recorded_config_reproduces_every_pick(tmp_path: Path) -> None:
    trace = read_trace([await _record(tmp_path)])
    assert len(trace.records) == 48
    assert all(r.prompt is None and r.prefix_hashes and r.prefix_block_size == 64 for r in trace.records)
    picked = {r.target for r in trace.records}
    assert len(picked) >= 3, "the recording should spread the prefix groups over the pods"
    # Spaced out (rate scale 1e-4: ~seconds apart), so every pod is idle at each arrival, as
    # the recording's pods were.
    result = Replayer(trace, trace.header.config_text, "recorded", rate_scale=1e-4, seed=SEED).run()
    assert result.completed == 48 and not result.errors
    assert result.mismatches == []
    assert (result.picks_compared, result.picks_matched) == (48, 48)
    assert result.hit_rate > 0.5  # repeats of a system prompt hit the pod that holds it
    again = Replayer(trace, trace.header.config_text, "recorded", rate_scale=1e-4, seed=SEED).run()
    assert (again.ttft, again.e2e, [p.requests for p in again.pods]) == \
        (result.ttft, result.e2e, [p.requests for p in result.pods])


async def test_another_config_or_seed_makes_other_picks(tmp_path: Path) -> None:
    trace = read_trace([await _record(tmp_path)])
    no_prefix = CONFIG.replace("weight: 3", "weight: 0")
    other = Replayer(trace, no_prefix, "no-prefix", rate_scale=1e-4, seed=SEED).run()
    assert other.picks_matched < other.picks_compared
    reseeded = Replayer(trace, CONFIG, "reseeded", rate_scale=1e-4, seed=SEED + 1).run()
    assert reseeded.picks_matched < reseeded.picks_compared


async def test_a_trace_recorded_with_prompts_replays_the_real_text(tmp_path: Path) -> None:
    trace = read_trace([await _record(tmp_path, with_prompts=True)])
    assert trace.header.with_prompts
    assert all(r.prompt is not None and len(r.prompt) == r.prompt_chars for r in trace.records)
    result = Replayer(trace, trace.header.config_text, "recorded", rate_scale=1e-4, seed=SEED).run()
    assert (result.picks_compared, result.picks_matched) == (48, 48)
