"""`epp` command line: one subcommand per component.

Each component module exposes `add_parser(subparsers)` which registers its subcommand and
sets `func(args) -> int` as the default.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
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
# children outlive the command. A second SIGTERM kills at once.
_UNWIND_ON_SIGTERM = frozenset({"bench", "chaos", "record", "replay", "tune"})


def _unwind_on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signum)


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
    except KeyboardInterrupt:
        # Ctrl-C: the command's `finally` blocks have stopped its children by now; a traceback
        # would only bury that. 130 = 128 + SIGINT, as a shell reports it.
        print(f"epp {args_in[0]}: interrupted; the processes it started are stopped", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
