"""`epp` command line: one subcommand per component.

Each component module exposes `add_parser(subparsers)` which registers its subcommand and
sets `func(args) -> int` as the default.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand module paths; a missing optional component is skipped with a note in --help.
_SUBCOMMANDS = (
    "epp.server.cli",  # epp serve
    "epp.sim.cli",  # epp sim
    "epp.sidecar.cli",  # epp sidecar
    "epp.bench.cli",  # epp bench
    "epp.localstack.cli",  # epp run-local
    "epp.chaos.cli",  # epp chaos
    "epp.bbr.cli",  # epp bbr
    "epp.admin.cli",  # epp explain, epp top
    "epp.replay.cli",  # epp record, epp replay, epp tune
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="epp", description="LLM-aware Endpoint Picker for Envoy")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for path in _SUBCOMMANDS:
        try:
            module = importlib.import_module(path)
        except ModuleNotFoundError as e:
            if e.name is not None and path.startswith(e.name):
                continue  # component not present in this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
