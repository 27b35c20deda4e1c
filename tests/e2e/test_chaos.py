"""The chaos suite's short version (`epp chaos --quick`): every fault, real Envoy, counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.chaos.cli import quick_timing
from epp.chaos.runner import SCENARIOS, Row, run_all

pytestmark = pytest.mark.e2e


def test_no_fault_loses_a_request_it_need_not_lose(tmp_path: Path) -> None:
    rows = {r.fault: r for r in run_all(SCENARIOS, quick_timing(), tmp_path)}
    assert set(rows) == {s.name for s in SCENARIOS}

    def clean(row: Row) -> None:
        assert row.sent > 10, row
        assert (row.failed_not_started, row.cut_in_flight) == (0, 0), (row.fault, row.failures)

    # Faults that must cost nothing at all: a dead pod's requests go to the EPP's fallback (the
    # requests it had accepted are cut with it: vLLM sends a stream's headers on accepting it,
    # before the prefill, so Envoy cannot retry them; counted, not failed); a hung pod / a pod
    # failing with 500s / with garbage metrics / garbage KV events / Redis down are routed
    # around; a lost EPP replica is replaced by the survivor; with FailOpen a dead EPP is
    # replaced by Envoy's own balancing.
    pod_kill = rows["pod SIGKILL"]
    assert pod_kill.failed_not_started == 0, pod_kill.failures
    assert pod_kill.cut_before_first_token <= pod_kill.cut_in_flight, pod_kill
    for name in ("pod hang (accepts, never answers)", "pod returns 500s", "pod metrics endpoint returns garbage",
                 "EPP SIGKILL, FailOpen", "EPP replica loss (1 of 2), FailClose",
                 "EPP rolling update (SIGTERM 1 of 2), FailClose",
                 "EPP replica loss (1 of 2), FailOpen", "garbage KV events",
                 "Redis down (Redis KV index configured)"):
        clean(rows[name])
    # FailClose with the only EPP dead: new requests get 503 until it is back, but no response
    # already flowing is cut.
    epp = rows["EPP SIGKILL, FailClose"]
    assert epp.cut_in_flight == 0 and epp.failed_not_started > 0 and epp.recovery_s < 15, epp
    # Envoy is the data path: its death cuts what flows through it; it is back within seconds.
    envoy = rows["Envoy restart (SIGKILL)"]
    assert envoy.recovery_s < 10, envoy
