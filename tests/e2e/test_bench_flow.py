"""`epp bench flow`, short: all four arms (no flow control, flow control with GIE defaults,
with our extensions, vllm-router with its queue and rate limit) on real processes (simulated
pods, Envoy, the EPP, vllm-router). Asserts the accounting the issue demands (every request
answered: sent = OK + rejected + evicted, 0 hung, 0 lost) and the report's structure, not
timings: a shared 2-core CI machine's latencies mean nothing. The full run is documented in
docs/flow-control.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_flow_bench_all_arms_answer_every_request(tmp_path: Path) -> None:
    out = tmp_path / "flow.json"
    proc = subprocess.run(
        [sys.executable, "-m", "epp", "bench", "flow", "--model-seconds", "1", "--time-scale", "0.5",
         "--unloaded-requests", "1", "--unloaded-probes", "2", "--run-dir", str(tmp_path / "run"), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    arms = {a["arm"]: a for a in data["arms"]}
    assert list(arms) == ["none", "fc-gie", "fc-reserve", "vllm-router"]
    for arm in arms.values():
        assert arm["sent"] > 10, arm
        assert (arm["hung"], arm["lost"]) == (0, 0), arm
        assert arm["sent"] == arm["ok"] + arm["rejected"] + arm["evicted"], arm
        assert len(data["outcomes"][arm["arm"]]) == arm["sent"]
        assert arm["capacity_rps"] == arms["none"]["capacity_rps"]  # the same offered load everywhere
    # A cut stream counts as evicted only where eviction is on, and matches the EPP's own count.
    assert arms["fc-reserve"]["evicted"] == arms["fc-reserve"]["breakdown"]["epp_evicted_inflight"]
    assert all(arms[k]["evicted"] == 0 for k in ("none", "fc-gie", "vllm-router"))
    # The flow-control arms queue in the EPP (the breakdown reads its metrics); the others do not.
    assert "epp_queue" in arms["fc-gie"]["breakdown"] and "epp_queue" not in arms["vllm-router"]["breakdown"]
    for line in ("| no flow control", "| flow control, GIE defaults", "| vllm-router, queue + rate limit"):
        assert line in proc.stdout
