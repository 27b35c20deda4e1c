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
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from epp.observability.decisions import DecisionEvent
from epp.prefixcache.block_hash import held_prefix_length

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


class TraceRecord(msgspec.Struct, kw_only=True):
    """One decision as read back: the DecisionEvent fields a replay needs (the per-pod
    scores are not recorded: they cost a third of a line and a replay recomputes them)."""

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


class DecisionLine(msgspec.Struct, omit_defaults=True):
    """A decision as stored: the TraceRecord fields, with the prefix hashes delta-coded.

    Prompts of one conversation or one system prompt share most of their leading blocks, so
    a line stores only the hashes no earlier line of the same file had: `prefix_base` is the
    number (0-based, among the file's decision lines) of a line holding the first
    `prefix_shared` hashes, and `prefix_new` the rest, 8 bytes big-endian each (base64 in
    the JSON). Each file is decoded on its own, so files stay self-contained."""

    time: float  # first: the reader recognises decision lines by it
    request_id: str = ""
    model: str = ""
    target_model: str = ""
    objective: str | None = None
    priority: int = 0
    path: str = "/v1/completions"
    stream: bool = False
    max_tokens: int | None = None
    prompt_chars: int = 0
    prompt_tokens: int | None = None
    prefix_block_size: int = 0
    prefix_base: int = -1
    prefix_shared: int = 0
    prefix_new: bytes = b""
    primary_profile: str = "default"
    picks: dict[str, str] = msgspec.field(default_factory=dict)
    fallbacks: list[str] = msgspec.field(default_factory=list)
    decision_s: float = 0.0
    headers_set: dict[str, str] = msgspec.field(default_factory=dict)
    prompt: str | None = None
    cache_salt: str | None = None


class PrefixCoder:
    """Delta-codes the prefix hashes of one file's decisions (see DecisionLine).

    `seen` maps a hash to a line that has it. The prefix-cache scorer's hashes are chained,
    so a line holding hash i holds the same hashes 0..i and "hash i seen" implies "every hash
    before i seen": the longest already-seen prefix is a binary search. The base line's
    hashes are compared before they are referenced, so hashes that are not chained (another
    producer, a collision) are stored in full rather than decoded wrong. The map is bounded
    by clearing it; later lines then start new bases."""

    __slots__ = ("held", "limit", "lines", "seen", "stored")

    def __init__(self, limit: int = 1 << 18) -> None:
        self.seen: dict[int, int] = {}
        self.stored: dict[int, Sequence[int]] = {}  # line -> its hashes, for lines in `seen`
        self.held = 0  # hashes referenced by `stored` (bounded too: at most 4 x limit)
        self.lines = 0
        self.limit = limit

    def encode(self, hashes: Sequence[int]) -> tuple[int, int, bytes]:
        seen = self.seen
        line = self.lines
        self.lines += 1
        n = len(hashes)
        if n == 0:
            return -1, 0, b""
        shared = held_prefix_length(seen, hashes)
        base = -1
        if shared:
            base = seen[hashes[shared - 1]]
            if self.stored[base][:shared] != hashes[:shared]:
                base, shared = -1, 0  # not chained: store in full
        if len(seen) + n - shared > self.limit or self.held + n > 4 * self.limit:
            seen.clear()
            self.stored.clear()
            self.held = 0
            base, shared = -1, 0
        for h in hashes[shared:]:
            seen[h] = line
        self.stored[line] = hashes
        self.held += n
        new = n - shared
        return base, shared, struct.pack(f">{new}Q", *hashes[shared:]) if new else b""


class PrefixDecoder:
    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: list[list[int]] = []

    def decode(self, base: int, shared: int, new: bytes) -> list[int]:
        tail = list(struct.unpack(f">{len(new) // 8}Q", new)) if new else []
        if base < 0 or shared <= 0:
            hashes = tail
        else:
            if base >= len(self.lines) or shared > len(self.lines[base]):
                raise ValueError(f"prefix_base {base} / prefix_shared {shared} refer to no earlier line")
            hashes = self.lines[base][:shared] + tail
        self.lines.append(hashes)
        return hashes


def to_line(ev: DecisionEvent | TraceRecord, coder: PrefixCoder) -> DecisionLine:
    base, shared, new = coder.encode(ev.prefix_hashes)
    return DecisionLine(
        ev.time, ev.request_id, ev.model, ev.target_model, ev.objective, ev.priority, ev.path, ev.stream,
        ev.max_tokens, ev.prompt_chars, ev.prompt_tokens, ev.prefix_block_size, base, shared, new,
        ev.primary_profile, ev.picks, ev.fallbacks, ev.decision_s, ev.headers_set, ev.prompt,
        ev.cache_salt)


def from_line(line: DecisionLine, decoder: PrefixDecoder) -> TraceRecord:
    return TraceRecord(
        time=line.time, request_id=line.request_id, model=line.model, target_model=line.target_model,
        objective=line.objective, priority=line.priority, path=line.path, stream=line.stream,
        max_tokens=line.max_tokens, prompt_chars=line.prompt_chars, prompt_tokens=line.prompt_tokens,
        prefix_hashes=decoder.decode(line.prefix_base, line.prefix_shared, line.prefix_new),
        prefix_block_size=line.prefix_block_size, primary_profile=line.primary_profile,
        picks=line.picks, fallbacks=line.fallbacks, decision_s=line.decision_s,
        headers_set=line.headers_set, prompt=line.prompt, cache_salt=line.cache_salt)


_encoder = msgspec.json.Encoder()
_kind_decoder = msgspec.json.Decoder(dict[str, Any])
_header_decoder = msgspec.json.Decoder(TraceHeader)
_line_decoder = msgspec.json.Decoder(DecisionLine)


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
        self._coder = PrefixCoder()
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
        self._coder = PrefixCoder()  # a new file is decoded on its own
        self._prune()
        return f

    def _prune(self) -> None:
        files = self._files()
        for old in files[: max(0, len(files) - self.max_files)]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()

    def write_events(self, events: Sequence[DecisionEvent | TraceRecord]) -> None:
        """Append decisions: one C-level encode per batch; a batch that does not fit the
        current file starts the next one (files may end a little short of max_bytes), and a
        batch larger than a whole file is written line by line."""
        if not events:
            return
        f = self._file if self._file is not None else self._open()
        data = _encoder.encode_lines([to_line(ev, self._coder) for ev in events])
        if self._size + len(data) > self.max_bytes and self._coder.lines > len(events):
            self._rotate()  # the coding of this batch is discarded with the old file's coder
            f = self._open()
            data = _encoder.encode_lines([to_line(ev, self._coder) for ev in events])
        if self._size + len(data) <= self.max_bytes:
            f.write(data)
            self._size += len(data)
            self.written += len(events)
            return
        self._rotate()
        f = self._open()
        for ev in events:
            line = _encoder.encode(to_line(ev, self._coder)) + b"\n"
            if self._size + len(line) > self.max_bytes and self._coder.lines > 1:
                self._rotate()
                f = self._open()
                line = _encoder.encode(to_line(ev, self._coder)) + b"\n"
            f.write(line)
            self._size += len(line)
            self.written += 1

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
        decoder = PrefixDecoder()
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
                        yield path, lineno, from_line(_line_decoder.decode(line), decoder)
                except (msgspec.DecodeError, ValueError, struct.error) as e:
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
    coder = PrefixCoder()
    with open(tmp, "wb") as f:
        f.write(_encoder.encode(header) + b"\n")
        f.write(_encoder.encode_lines([to_line(rec, coder) for rec in records]))
    os.replace(tmp, path)
