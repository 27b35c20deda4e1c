"""Trace files: bounded rotation (size and count), self-contained files, torn last lines."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from epp.observability.decisions import DecisionEvent
from epp.replay.trace import (
    TRACE_VERSION,
    PodInfo,
    PrefixCoder,
    PrefixDecoder,
    RotatingTraceWriter,
    TraceError,
    TraceHeader,
    read_trace,
)


def _event(i: int, t: float) -> DecisionEvent:
    return DecisionEvent(time=t, request_id=f"r{i}", model="m", target_model="m", objective="gold", priority=1,
                         path="/v1/chat/completions", stream=True, max_tokens=16, prompt_chars=1000,
                         prompt_tokens=None, prefix_hashes=[i, i + 1, 2**63 + i], prefix_block_size=64,
                         primary_profile="decode", picks={"decode": "10.0.0.1:8000", "prefill": "10.0.0.2:8000"},
                         fallbacks=["10.0.0.3:8000"], scores={"default/pod0": 0.5}, decision_s=1e-4)


def _header() -> TraceHeader:
    return TraceHeader(config_source="c.yaml", config_text="plugins: []\n",
                       pods=[PodInfo(key="default/pod0", hostport="10.0.0.1:8000")])


def test_rotation_keeps_at_most_max_files_of_max_bytes_each(tmp_path: Path) -> None:
    writer = RotatingTraceWriter(tmp_path, _header(), max_bytes=4096, max_files=3, prefix="trace-w0")
    for i in range(200):
        writer.write_events([_event(i, 100.0 + i)])
    writer.close()
    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) == 3 and writer.rotations > 3
    assert all(f.stat().st_size <= 4096 for f in files)
    trace = read_trace([tmp_path])  # every kept file starts with a header
    kept = [r.request_id for r in trace.records]
    assert kept[-1] == "r199" and kept == sorted(kept, key=lambda s: int(s[1:]))
    rec = trace.records[-1]
    assert rec.target == "10.0.0.1:8000" and rec.prefill == "10.0.0.2:8000"
    assert rec.prefix_hashes == [199, 200, 2**63 + 199] and rec.objective == "gold" and rec.stream


def test_reader_ignores_a_torn_last_line_and_sorts_by_time(tmp_path: Path) -> None:
    writer = RotatingTraceWriter(tmp_path, _header())
    writer.write_events([_event(1, 5.0), _event(0, 3.0)])
    writer.close()
    with open(writer.path, "ab") as f:
        f.write(b'{"kind":"decision","time":9.0,"mod')  # the recorder was killed mid-write
    trace = read_trace([writer.path])
    assert [r.request_id for r in trace.records] == ["r0", "r1"]
    assert trace.header.version == TRACE_VERSION and trace.header.config_text == "plugins: []\n"


def test_bad_traces_are_named(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no such trace"):
        read_trace([tmp_path / "missing"])
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"kind":"header","version":1}\nnot json\n')
    with pytest.raises(TraceError, match=r"x.jsonl:2"):
        read_trace([bad])
    bad.write_text('{"kind":"header","version":99}\n')
    with pytest.raises(TraceError, match="version 99"):
        read_trace([bad])
    bad.write_text('{"kind":"decision","time":1.0,"model":"m"}\n')
    with pytest.raises(TraceError, match="no header"):
        read_trace([bad])
    with pytest.raises(ValueError, match="4096"):
        RotatingTraceWriter(tmp_path, _header(), max_bytes=100)


def test_prefix_hashes_are_delta_coded_and_decode_exactly(tmp_path: Path) -> None:
    # Conversations: each turn's prompt extends the previous one, so its leading blocks repeat.
    rng = random.Random(4)
    convs: list[list[int]] = [[] for _ in range(5)]
    events = []
    for i in range(300):
        conv = convs[rng.randrange(5)]
        conv.extend(rng.getrandbits(64) for _ in range(rng.randrange(1, 8)))
        ev = _event(i, float(i))
        ev.prefix_hashes = list(conv[:256])
        events.append(ev)
    writer = RotatingTraceWriter(tmp_path / "coded", _header(), max_bytes=64 << 10, max_files=100)
    for start in range(0, 300, 7):
        writer.write_events(events[start:start + 7])
    writer.close()
    trace = read_trace([tmp_path / "coded"])
    assert writer.rotations >= 1  # decoding works across files, each on its own
    assert [r.prefix_hashes for r in trace.records] == [e.prefix_hashes for e in events]
    plain = sum(len(str(e.prefix_hashes)) for e in events)
    coded = sum(f.stat().st_size for f in (tmp_path / "coded").glob("*.jsonl"))
    assert coded < plain / 4
    coder = PrefixCoder(limit=50)  # a full map is cleared: later lines start new bases
    decoder = PrefixDecoder()
    for e in events[:60]:
        assert decoder.decode(*coder.encode(e.prefix_hashes)) == e.prefix_hashes
