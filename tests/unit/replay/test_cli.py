"""`epp replay`, `epp tune`, `epp record` from the command line, and the simulator profile."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from epp.cli import build_parser, main
from epp.replay.profile import ProfileError, SimProfile
from epp.replay.replayer import Replayer
from epp.replay.trace import write_trace

from .conftest import PREFIX_CONFIG, shared_prefix_trace


@pytest.fixture
def trace_dir(tmp_path: Path) -> Path:
    trace = shared_prefix_trace(requests=60)
    out = tmp_path / "trace"
    out.mkdir()
    write_trace(out / "trace-w0-000000.jsonl", trace.header, trace.records)
    return out


def test_replay_two_configs_side_by_side(trace_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "affinity.yaml"
    other.write_text(PREFIX_CONFIG.replace("weight: 0", "weight: 3"))
    report = tmp_path / "report.md"
    assert main(["replay", str(trace_dir), "--config", "recorded", "--config", str(other),
                 "--rate-scale", "2", "--out", str(report)]) == 0
    text = report.read_text()
    assert "| `recorded` | 60/60 |" in text and f"| `{other}` | 60/60 |" in text
    assert "rate scale 2" in text and "![replay](report.svg)" in text
    for hp in ("10.0.0.1:8000", "10.0.0.4:8000"):
        assert f"`{hp}`" in text
    svg = ET.parse(tmp_path / "report.svg").getroot()
    assert svg.tag.endswith("svg") and len(svg.findall(".//{http://www.w3.org/2000/svg}rect")) > 10


def test_replay_errors_are_clear(trace_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "nothing")]) == 2
    assert "no such trace" in capsys.readouterr().err
    assert main(["replay", str(trace_dir), "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("plugins:\n- type: no-such-scorer\n")
    assert main(["replay", str(trace_dir), "--config", str(bad)]) == 2
    assert "no-such-scorer" in capsys.readouterr().err
    precise = tmp_path / "precise.yaml"
    precise.write_text("plugins:\n- type: precise-prefix-cache-scorer\n  parameters:\n    tokenizer: simple\n")
    assert main(["replay", str(trace_dir), "--config", str(precise)]) == 2
    assert "precise-prefix-cache-scorer" in capsys.readouterr().err


def test_tune_writes_the_winning_config(tmp_path: Path) -> None:
    # 240 requests: with 60, which of several tied pods the picker draws decides the p90
    # (both weights are then within chance of each other).
    trace = shared_prefix_trace(requests=240)
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    write_trace(trace_dir / "trace-w0-000000.jsonl", trace.header, trace.records)
    best, report = tmp_path / "best.yaml", tmp_path / "tune.md"
    assert main(["tune", str(trace_dir), "--search", "prefix-cache-scorer.weight=0,4",
                 "--budget-s", "60", "--out", str(best), "--report", str(report)]) == 0
    doc = yaml.safe_load(best.read_text())
    assert best.read_text().startswith("# Written by: epp tune")
    assert doc["schedulingProfiles"][0]["plugins"][0] == {"pluginRef": "prefix-cache-scorer", "weight": 4}
    assert "| 1 | `prefix-cache-scorer.weight=4` |" in report.read_text()


def test_record_is_serve_with_a_required_record_dir() -> None:
    parser = build_parser()
    args = parser.parse_args(["record", "--record-dir", "/tmp/x", "--endpoints-file", "e.yaml",
                              "--record-max-mb", "1", "--record-files", "2"])
    assert args.record_dir == Path("/tmp/x") and args.endpoints_file == Path("e.yaml")
    with pytest.raises(SystemExit):
        parser.parse_args(["record", "--endpoints-file", "e.yaml"])
    serve = parser.parse_args(["serve", "--record-dir", "/tmp/y", "--record-prompts"])
    assert serve.record_dir == Path("/tmp/y") and serve.record_prompts


def test_sim_profile_models_a_slower_gpu(tmp_path: Path) -> None:
    trace = shared_prefix_trace(requests=60)
    queue_only = "plugins:\n- type: random-picker\n"
    fast = Replayer(trace, queue_only, "q", seed=1).run()
    path = tmp_path / "profile.yaml"
    path.write_text("latency:\n  prefill_per_token_ms: 0.2\npods:\n  '10.0.0.1:8000': {slowdown: 4.0}\n")
    slow = Replayer(trace, queue_only, "q", seed=1, profile=SimProfile.load(path)).run()
    assert [p.requests for p in slow.pods] == [p.requests for p in fast.pods]  # random picks, same seed
    assert slow.ttft.mean > 3 * fast.ttft.mean
    path.write_text("latency:\n  warp_speed: 9\n")
    with pytest.raises(ProfileError, match=re.escape("profile.yaml: unknown latency field 'warp_speed'")):
        SimProfile.load(path)
    path.write_text("pods:\n  '10.0.0.1:8000': {gpus: 8}\n")
    with pytest.raises(ProfileError, match=re.escape("pods.10.0.0.1:8000: unknown simulator setting 'gpus'")):
        SimProfile.load(path)
