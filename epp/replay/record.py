"""The trace recorder: a DecisionBus subscriber that writes rotating JSON-lines files.

It runs inside the serving EPP (`epp serve --record-dir DIR`, or `epp record`, which is
`epp serve` with recording required) because that is where the decisions are: attaching
from another process would copy every event over a socket, which costs more than writing
it. The hot path only appends the event to a bounded buffer; a task drains the buffer every
`flush_interval_s`, encodes the batch with msgspec (C) and appends it to the current file.
If the disk cannot keep up the buffer fills and events are dropped and counted (logged at
stop and on each rotation) rather than slowing routing down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from epp.config.loader import DEFAULT_CONFIG_NAME, ConfigError, default_config_text, embedded_config_names
from epp.datastore.datastore import Datastore
from epp.observability.decisions import DecisionBus, Subscription
from epp.replay.trace import PodInfo, RotatingTraceWriter, TraceHeader

log = logging.getLogger("epp.replay.record")


@dataclass(slots=True)
class RecordOptions:
    directory: Path
    max_file_bytes: int = 64 << 20
    max_files: int = 8
    with_prompts: bool = False
    flush_interval_s: float = 0.25
    buffer: int = 65536  # events held between two flushes before dropping

    def validate(self) -> None:
        if self.max_file_bytes < 4096:
            raise ValueError(f"--record-max-mb gives {self.max_file_bytes} bytes per file; need >= 4096")
        if self.max_files < 1:
            raise ValueError(f"--record-files must be >= 1, got {self.max_files}")
        if self.flush_interval_s <= 0:
            raise ValueError(f"the flush interval must be > 0 s, got {self.flush_interval_s}")


class TraceRecorder:
    """Subscribes to the decision bus on start() and writes until stop()."""

    def __init__(self, options: RecordOptions, bus: DecisionBus, datastore: Datastore,
                 config: Callable[[], tuple[str, str]], worker: int = 0) -> None:
        options.validate()
        self.options = options
        self.bus = bus
        self.datastore = datastore
        self._config = config  # () -> (source, text) of the running scheduler config
        self.worker = worker
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.writer: RotatingTraceWriter | None = None

    def _header(self) -> TraceHeader:
        source, text = self._config()
        pods = [PodInfo(key=ep.key, hostport=ep.hostport, role=str(ep.role))
                for ep in self.datastore.endpoints()]
        return TraceHeader(started=time.time(), worker=self.worker, config_source=source,
                           config_text=text, pods=pods, with_prompts=self.options.with_prompts)

    async def start(self) -> None:
        opts = self.options
        self.writer = RotatingTraceWriter(opts.directory, self._header(), opts.max_file_bytes,
                                          opts.max_files, prefix=f"trace-w{self.worker}")
        self._sub = self.bus.subscribe(maxsize=opts.buffer, with_prompts=opts.with_prompts)
        self._task = asyncio.create_task(self._run(), name="epp-trace-recorder")
        log.info("recording decisions to %s (%d files of at most %d MiB%s)", opts.directory,
                 opts.max_files, opts.max_file_bytes >> 20, ", with prompts" if opts.with_prompts else "")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.options.flush_interval_s)
            self.flush()

    def flush(self) -> int:
        """Write what is buffered; returns the number of decisions written."""
        sub, writer = self._sub, self.writer
        if sub is None or writer is None or not len(sub):
            return 0
        rotations = writer.rotations
        events = sub.drain()
        writer.write_events(events)
        writer.flush()
        if writer.rotations != rotations:
            writer.header = self._header()  # the next file starts with the current pool
            if sub.dropped:
                log.warning("trace recorder dropped %d decisions so far (disk too slow?)", sub.dropped)
        return len(events)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            self.flush()
        finally:
            if self._sub is not None:
                self.bus.unsubscribe(self._sub)
                if self._sub.dropped:
                    log.warning("trace recorder dropped %d decisions", self._sub.dropped)
            if self.writer is not None:
                self.writer.close()
                log.info("recorded %d decisions to %s", self.writer.written, self.options.directory)

    @property
    def dropped(self) -> int:
        return self._sub.dropped if self._sub is not None else 0


def config_text(path: str | Path | None, strict: bool = False) -> tuple[str, str]:
    """(source, text) of a scheduler config as `epp serve --config` reads it (a file, or the
    name of an embedded config). Unreadable: ConfigError when `strict`, else no text (the
    header then has no config and replay needs --config)."""
    if path is None:
        return DEFAULT_CONFIG_NAME, default_config_text()
    source = str(path)
    file = Path(path)
    if not file.exists() and source in embedded_config_names():
        return source, resources.files("epp.config").joinpath(source).read_text(encoding="utf-8")
    try:
        return source, file.read_text(encoding="utf-8")
    except OSError as e:
        if strict:
            raise ConfigError(f"{source}: cannot read the scheduler config: {e.strerror or e}") from None
        return source, ""


def add_record_arguments(p: argparse.ArgumentParser, required: bool = False) -> None:
    """The recording flags of `epp serve` (and `epp record`)."""
    p.add_argument("--record-dir", type=Path, default=None, required=required,
                   help="write a decision trace (rotating JSON-lines files) into this directory, "
                        "for `epp replay` / `epp tune`")
    p.add_argument("--record-max-mb", type=float, default=64.0,
                   help="size of one trace file before the recorder starts the next (64)")
    p.add_argument("--record-files", type=int, default=8,
                   help="trace files kept; the oldest is deleted beyond this (8)")
    p.add_argument("--record-prompts", action="store_true",
                   help="also record the prompt text (off: only its length and prefix-block hashes)")


def record_options(args: argparse.Namespace) -> RecordOptions | None:
    directory = getattr(args, "record_dir", None)
    if directory is None:
        return None
    opts = RecordOptions(directory=directory, max_file_bytes=int(args.record_max_mb * (1 << 20)),
                         max_files=args.record_files, with_prompts=bool(args.record_prompts))
    opts.validate()
    return opts
