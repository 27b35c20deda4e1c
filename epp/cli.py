"""`epp` command line: one subcommand per component.

Each component module exposes `add_parser(subparsers)` which registers its subcommand and
sets `func(args) -> int` as the default.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import time
from types import FrameType

# Subcommand -> the module that registers it. Only the chosen subcommand's module is imported
# (`epp serve` skipped ~0.26 s of imports of the benchmark, replay and simulator modules on
# every start); `epp --help` and an unknown command import them all. A missing optional
# component is skipped in --help.
_SUBCOMMANDS: dict[str, str] = {
    "serve": "epp.server.cli",
    "sim": "epp.sim.cli",
    "sidecar": "epp.sidecar.cli",
    "bench": "epp.bench.cli",
    "run-local": "epp.localstack.cli",
    "chaos": "epp.chaos.cli",
    "bbr": "epp.bbr.cli",
    "explain": "epp.admin.cli",
    "top": "epp.admin.cli",
    "record": "epp.replay.cli",
    "replay": "epp.replay.cli",
    "tune": "epp.replay.cli",
}


# Commands that start processes (pods, Envoy, EPPs, routers) and stop them in `finally`
# blocks: SIGTERM (a CI timeout, `kill`) must unwind through those as Ctrl-C does, or the
# children outlive the command. A second SIGTERM ends it at once, its children with it.
_UNWIND_ON_SIGTERM = frozenset({"bench", "chaos", "record", "replay", "tune"})


def _unwind_on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, _kill_children_and_exit)
    raise SystemExit(128 + signum)


def _kill_children_and_exit(signum: int, frame: FrameType | None) -> None:
    """A second SIGTERM, while the first one unwinds: no more grace periods. The children run
    in process groups of their own (start_new_session), so this process exiting alone left
    them running (an orphaned EPP of a benchmark killed twice kept a quarter of a core busy
    through the next benchmark): their groups are killed first."""
    for pid in _child_pids():
        _signal_group(pid, signal.SIGKILL)
    os._exit(128 + signum)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # a child that leads its own group, and its children
    except OSError:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _reaped(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True  # reaped by its owner already


def _stop_stragglers(grace_s: float = 5.0) -> None:
    """After the first SIGTERM has unwound the command: a child its `finally` blocks did not
    stop is one whose owner never learnt of it. The signal can land inside Popen after the fork,
    and Popen then raises without returning the process: once in 37 runs on a loaded machine,
    the SIGTERM benchmark test found a child still running 10 s after the benchmark had exited.
    Each is asked to stop, then killed after `grace_s`."""
    pids = _child_pids()
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [pid for pid in pids if not _reaped(pid)]
    for pid in pids:
        _signal_group(pid, signal.SIGKILL)


def _child_pids() -> list[int]:
    """This process's children, from /proc (Linux; elsewhere none are found)."""
    me = os.getpid()
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue  # exited meanwhile
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            fields = stat[stat.rfind(b")") + 2:].split()
            if len(fields) > 1 and int(fields[1]) == me:
                found.append(int(entry.name))
    return found


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `epp` parser with every subcommand, or with only `command`'s module when it is known."""
    parser = argparse.ArgumentParser(prog="epp", description="LLM-aware Endpoint Picker for Envoy")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    paths = [_SUBCOMMANDS[command]] if command in _SUBCOMMANDS else list(dict.fromkeys(_SUBCOMMANDS.values()))
    for path in paths:
        try:
            module = importlib.import_module(path)
        except ModuleNotFoundError as e:
            if e.name is not None and path.startswith(e.name):
                continue  # component not present in this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    parser = build_parser(args_in[0] if args_in else None)
    args = parser.parse_args(args_in)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    # Only the main thread may set handlers; an in-process caller (a test) gets its own back.
    if not (args_in and args_in[0] in _UNWIND_ON_SIGTERM and threading.current_thread() is threading.main_thread()):
        return int(func(args) or 0)
    previous = signal.signal(signal.SIGTERM, _unwind_on_sigterm)
    try:
        return int(func(args) or 0)
    except SystemExit as e:
        if e.code == 128 + signal.SIGTERM:
            _stop_stragglers()
        raise
    except KeyboardInterrupt:
        # Ctrl-C: the command's `finally` blocks have stopped its children by now; a traceback
        # would only bury that. 130 = 128 + SIGINT, as a shell reports it.
        print(f"epp {args_in[0]}: interrupted; the processes it started are stopped", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
