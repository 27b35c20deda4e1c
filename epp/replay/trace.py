"""The decision trace: JSON lines in bounded, rotating files.

A trace directory holds files `<prefix>-<seq>.jsonl` (prefix `trace-w<worker>`), each
self-contained: its first line is a header (format version, the EPP's scheduler config
text and source, the pool's endpoints), every further line one decision:

    {"kind": "header", "version": 1, "started": 1764567890.1, "config_source": "...",
     "config_text": "...", "pods": [{"key": "default/pod0", "hostport": "10.0.0.1:8000",
     "role": "both"}], "worker": 0}
    {"time": 1764567890.2, "request_id": "...", "model": "...", ...}

The decision lines are the fields of epp.observability.decisions.DecisionEvent (a line
without "kind" is a decision; other producers may write "kind": "decision").
The prompt text is only present when recorded with --record-prompts. A file is closed when
it reaches `max_bytes`; the oldest files are deleted to keep at most `max_files`, so a
recorder left running never fills the disk.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from epp.observability.decisions import DecisionEvent

TRACE_VERSION = 1
SUFFIX = ".jsonl"


class TraceError(ValueError):
    """A trace file that cannot be read (names the file and line)."""


class PodInfo(msgspec.Struct, frozen=True):
    key: str
    hostport: str
    role: str = "both"


class TraceHeader(msgspec.Struct, kw_only=True):
    kind: str = "header"
    version: int = TRACE_VERSION
    started: float = 0.0
    worker: int = 0
    config_source: str = ""
    config_text: str = ""
    pods: list[PodInfo] = msgspec.field(default_factory=list)
    with_prompts: bool = False


class TraceRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One decision as read back (the DecisionEvent fields; unknown fields are ignored so a
    newer recorder's traces still replay)."""

    time: float
    request_id: str = ""
    model: str
    target_model: str = ""
    objective: str | None = None
    priority: int = 0
    path: str = "/v1/completions"
    stream: bool = False
    max_tokens: int | None = None
    prompt_chars: int = 0
    prompt_tokens: int | None = None
    prefix_hashes: list[int] = msgspec.field(default_factory=list)
    prefix_block_size: int = 0
    primary_profile: str = "default"
    picks: dict[str, str] = msgspec.field(default_factory=dict)
    fallbacks: list[str] = msgspec.field(default_factory=list)
    scores: dict[str, float] = msgspec.field(default_factory=dict)
    decision_s: float = 0.0
    headers_set: dict[str, str] = msgspec.field(default_factory=dict)
    prompt: str | None = None
    cache_salt: str | None = None

    @property
    def target(self) -> str:
        return self.picks.get(self.primary_profile, "")

    @property
    def prefill(self) -> str | None:
        for profile, hostport in self.picks.items():
            if profile != self.primary_profile:
                return hostport
        return None


@dataclass(slots=True)
class Trace:
    """A whole trace in memory: the newest header and the decisions ordered by time."""

    header: TraceHeader
    records: list[TraceRecord]
    files: list[Path] = field(default_factory=list)

    @property
    def pods(self) -> list[PodInfo]:
        """The header's pods plus any pod a decision picked that the header missed
        (the pool may have changed while recording)."""
        seen = {p.hostport: p for p in self.header.pods}
        for rec in self.records:
            for hostport in rec.picks.values():
                if hostport not in seen:
                    seen[hostport] = PodInfo(key=f"replay/{hostport}", hostport=hostport)
        return list(seen.values())

    @property
    def duration_s(self) -> float:
        return self.records[-1].time - self.records[0].time if self.records else 0.0


_encoder = msgspec.json.Encoder()
_kind_decoder = msgspec.json.Decoder(dict[str, Any])
_header_decoder = msgspec.json.Decoder(TraceHeader)
_record_decoder = msgspec.json.Decoder(TraceRecord)


def encode_events(events: Sequence[DecisionEvent]) -> bytes:
    """JSON lines for decisions: msgspec encodes the slots dataclasses directly, the whole
    batch in one C call. Decision lines carry no "kind" (a line that is not a header is a
    decision), which keeps them as cheap as possible to write."""
    return _encoder.encode_lines(events)


class RotatingTraceWriter:
    """Appends decision lines to `<dir>/<prefix>-<seq>.jsonl`, starting a new file (with the
    header) past `max_bytes` and deleting the oldest beyond `max_files`."""

    def __init__(self, directory: Path, header: TraceHeader, max_bytes: int = 64 << 20,
                 max_files: int = 8, prefix: str = "trace") -> None:
        if max_bytes < 4096:
            raise ValueError(f"trace files need at least 4096 bytes, got {max_bytes}")
        if max_files < 1:
            raise ValueError(f"keep at least one trace file, got {max_files}")
        self.directory = directory
        self.header = header
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.prefix = prefix
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = self._files()
        self._seq = _seq_of(existing[-1]) + 1 if existing else 0
        self._file: IO[bytes] | None = None
        self._size = 0
        self.written = 0  # decisions written over the writer's life
        self.rotations = 0

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob(f"{self.prefix}-*{SUFFIX}"), key=_seq_of)

    @property
    def path(self) -> Path:
        return self.directory / f"{self.prefix}-{self._seq:06d}{SUFFIX}"

    def _open(self) -> IO[bytes]:
        f = open(self.path, "ab")  # noqa: SIM115 - kept open across writes, closed in close()
        head = _encoder.encode(self.header) + b"\n"
        f.write(head)
        self._size = len(head)
        self._file = f
        self._prune()
        return f

    def _prune(self) -> None:
        files = self._files()
        for old in files[: max(0, len(files) - self.max_files)]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()

    def write(self, data: bytes, count: int) -> None:
        f = self._file if self._file is not None else self._open()
        if self._size + len(data) > self.max_bytes and self._size > 0 and count:
            # Split at a line boundary so no decision straddles two files.
            cut = data.rfind(b"\n", 0, max(0, self.max_bytes - self._size))
            if cut >= 0:
                head = data[: cut + 1]
                f.write(head)
                self._size += len(head)
                data = data[cut + 1:]
            self._rotate()
            f = self._open()
        f.write(data)
        self._size += len(data)
        self.written += count
        if self._size >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._seq += 1
        self.rotations += 1

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _seq_of(path: Path) -> int:
    stem = path.name[: -len(SUFFIX)]
    tail = stem.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def trace_files(paths: Iterable[Path]) -> list[Path]:
    """The trace files named by `paths` (files, or directories of *.jsonl), oldest first."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(p.glob(f"*{SUFFIX}"), key=lambda f: (f.name.rsplit("-", 1)[0], _seq_of(f)))
        elif p.exists():
            out.append(p)
        else:
            raise TraceError(f"{p}: no such trace file or directory")
    if not out:
        raise TraceError(f"no trace files (*{SUFFIX}) in {', '.join(map(str, paths))}")
    return out


def iter_lines(files: Sequence[Path]) -> Iterator[tuple[Path, int, TraceHeader | TraceRecord]]:
    for path in files:
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if not line.endswith(b"\n"):
                    break  # the recorder was stopped mid-write: ignore the torn last line
                try:
                    # The writers put a header's "kind" first; decision lines have none.
                    kind: Any
                    if line.startswith(b'{"kind":"header"'):
                        kind = "header"
                    elif line.startswith(b'{"time"'):
                        kind = "decision"
                    else:
                        kind = _kind_decoder.decode(line).get("kind", "decision")
                    if kind == "header":
                        yield path, lineno, _header_decoder.decode(line)
                    elif kind == "decision":
                        yield path, lineno, _record_decoder.decode(line)
                except msgspec.DecodeError as e:
                    raise TraceError(f"{path}:{lineno}: not a trace line: {e}") from None


def read_trace(paths: Iterable[Path], limit: int = 0) -> Trace:
    """Load every decision of the trace files (sorted by time); `limit` > 0 keeps the first."""
    files = trace_files(list(paths))
    header: TraceHeader | None = None
    records: list[TraceRecord] = []
    for path, lineno, item in iter_lines(files):
        if isinstance(item, TraceHeader):
            if item.version > TRACE_VERSION:
                raise TraceError(f"{path}:{lineno}: trace format version {item.version} is newer "
                                 f"than this epp understands ({TRACE_VERSION})")
            header = item
        else:
            records.append(item)
    if header is None:
        raise TraceError(f"{files[0]}: no header line; not an epp decision trace")
    records.sort(key=lambda r: r.time)
    if limit > 0:
        records = records[:limit]
    if not records:
        raise TraceError(f"{', '.join(map(str, files))}: the trace holds no decisions")
    return Trace(header, records, files)


def write_trace(path: Path, header: TraceHeader, records: Iterable[TraceRecord]) -> None:
    """Write a whole trace file at once (constructed traces, tests, `epp replay --save`)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_encoder.encode(header) + b"\n")
        for rec in records:
            f.write(_encoder.encode(rec) + b"\n")
    os.replace(tmp, path)
