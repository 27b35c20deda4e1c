import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from epp.bench.cpu_use import collect, main
from epp.bench.routers import CPU_USE_FILE, process_cpu_seconds, write_cpu_use


def _cell(root: Path, tag: str, router: str, wall: float, cpu: dict[str, float]) -> None:
    (root / tag).mkdir(parents=True)
    write_cpu_use(root / tag / CPU_USE_FILE, router, cpu, dict.fromkeys(cpu, 0.0), wall)


def test_sums_pods_and_router_processes_per_phase_as_share_of_a_core(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _cell(tmp_path, "no-sharing-3-epp-rr-r0", "epp-rr", 10.0,
          {"vllm-0": 1.0, "vllm-1": 2.0, "vllm-0-sidecar": 0.4, "envoy": 0.2, "epp": 0.3})
    _cell(tmp_path, "no-sharing-3-epp-rr-r1", "epp-rr", 10.0, {"vllm-0": 3.8, "envoy": 0.1, "epp": 0.2})
    _cell(tmp_path, "no-sharing-3-envoy-rr-r0-try2", "envoy-rr", 5.0, {"vllm-0": 0.5, "envoy-lb": 0.1})
    rows = collect(tmp_path)
    # pods (with the sidecar): 34 % and 38 % of a core; router (envoy, epp): 5 % and 3 %
    flat = {key: [round(v, 6) for run in runs for v in run] for key, runs in rows.items()}
    assert flat[("no-sharing", "3", "epp-rr")] == [34.0, 5.0, 38.0, 3.0]
    assert flat[("no-sharing", "3", "envoy-rr")] == [10.0, 2.0]
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| no-sharing @ 3 | epp-rr | 2 | 36 | 4 |" in out
    assert "| no-sharing @ 3 | envoy-rr | 1 | 10 | 2 |" in out


def test_vllm_router_is_a_router_not_a_pod(tmp_path: Path) -> None:
    _cell(tmp_path, "no-sharing-3-vr-rr-r0", "vr-rr", 10.0, {"vllm-0": 2.0, "vllm-router": 0.5})
    assert collect(tmp_path)[("no-sharing", "3", "vr-rr")] == [(20.0, 5.0)]


def test_no_files_is_an_error(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 1


def test_process_cpu_counts_a_busy_session_and_writes_json(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.4: pass\ntime.sleep(30)\n"],
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        used = 0.0
        while time.monotonic() < deadline and used < 0.3:
            time.sleep(0.1)
            used = process_cpu_seconds({"busy": proc.pid})["busy"]
        assert used >= 0.3
        write_cpu_use(tmp_path / CPU_USE_FILE, "x", {"busy": used}, {"busy": 0.1}, 2.0)
        data = json.loads((tmp_path / CPU_USE_FILE).read_text())
        assert data["router"] == "x" and data["wall_s"] == 2.0
        assert data["cpu_s"]["busy"] == pytest.approx(used - 0.1, abs=1e-3)
    finally:
        proc.kill()
        proc.wait(10)
