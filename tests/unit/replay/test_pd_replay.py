"""P/D in replay: a long uncached prompt goes to a prefill pod first, then to a decode pod
that pulls its KV (the simulator's remote prefill), and the report counts both."""

from __future__ import annotations

from pathlib import Path

from epp.replay.replayer import Replayer
from epp.replay.trace import PodInfo, Trace, TraceHeader

from .conftest import shared_prefix_trace

PD_CONFIG = Path(__file__).resolve().parents[3] / "deploy/vllm/pd/epp-config-pd.yaml"


def test_pd_config_splits_long_prompts_over_prefill_and_decode_pods() -> None:
    base = shared_prefix_trace(groups=30, requests=40, rate=5.0)
    pods = [PodInfo(key="default/prefill-0", hostport="10.0.1.1:8000", role="prefill"),
            PodInfo(key="default/decode-0", hostport="10.0.1.2:8000", role="decode"),
            PodInfo(key="default/decode-1", hostport="10.0.1.3:8000", role="decode")]
    trace = Trace(TraceHeader(pods=pods), base.records)
    result = Replayer(trace, PD_CONFIG.read_text(), str(PD_CONFIG)).run()
    assert result.completed == 40 and not result.errors
    by_pod = {p.hostport: p for p in result.pods}
    assert by_pod["10.0.1.1:8000"].requests == 0  # a prefill pod never decodes
    assert by_pod["10.0.1.1:8000"].prefills > 0  # long prompts without a cached prefix
    assert by_pod["10.0.1.2:8000"].requests + by_pod["10.0.1.3:8000"].requests == 40
    assert result.ttft.count == 40
