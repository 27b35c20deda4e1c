"""maxPrefillBacklog: a busy prefill pod makes the decode pod prefill locally."""

from pathlib import Path

from epp.config.loader import load_scheduler_config
from epp.datastore import Datastore, Endpoint
from epp.scheduling.registry import PluginContext
from epp.scheduling.types import LLMRequest

CONFIG = Path(__file__).resolve().parents[4] / "deploy/vllm/pd/epp-config-pd.yaml"


def _pool() -> tuple[Datastore, Endpoint]:
    ds = Datastore()
    prefill = ds.upsert_endpoint(Endpoint(name="p", address="127.0.0.1", port=1, labels={"llm-d.ai/role": "prefill"}))
    for i in range(2):
        ds.upsert_endpoint(Endpoint(name=f"d{i}", address="127.0.0.1", port=10 + i, labels={"llm-d.ai/role": "decode"}))
    return ds, prefill


def _long(i: int) -> LLMRequest:
    return LLMRequest(request_id=str(i), model="m", target_model="m", prompt=f"{i} " + "word " * 2000)


def test_backlogged_prefill_pod_is_skipped_until_it_drains() -> None:
    ds, prefill = _pool()
    sched = load_scheduler_config(CONFIG, PluginContext(ds)).scheduler
    eps = ds.healthy_endpoints()
    first, state = sched.schedule(_long(1), eps)
    assert "x-prefiller-host-port" in first.headers
    sched.pre_request(state, _long(1), first)  # assumed-load counts it on the prefill pod
    second, state = sched.schedule(_long(2), eps)
    sched.pre_request(state, _long(2), second)
    assert "x-prefiller-host-port" in second.headers
    third, _ = sched.schedule(_long(3), eps)  # backlog of 2 reached: prefill locally
    assert "x-prefiller-host-port" not in third.headers
    prefill.metrics.waiting_queue_size = 0  # a scrape shows the prefill pod drained
    fourth, _ = sched.schedule(_long(4), eps)
    assert fourth.headers["x-prefiller-host-port"] == prefill.hostport
