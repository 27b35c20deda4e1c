"""The `epp` command line: every subcommand is where the table says, and a run imports only its own."""

from __future__ import annotations

import argparse
import subprocess
import sys

from epp.cli import _SUBCOMMANDS, build_parser


def _choices(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_the_full_parser_has_exactly_the_table_s_subcommands() -> None:
    assert _choices(build_parser()) == set(_SUBCOMMANDS)


def test_each_subcommand_is_registered_by_the_module_the_table_names() -> None:
    for command in _SUBCOMMANDS:
        assert command in _choices(build_parser(command)), command


def test_serve_does_not_import_the_other_subcommands_modules() -> None:
    code = ("import sys; from epp.cli import build_parser; "
            "build_parser('serve').parse_args(['serve', '--validate-config']); "
            "print(sorted(m for m in ('epp.bench.cli', 'epp.sim.cli', 'epp.chaos.cli', 'epp.replay.cli', "
            "'epp.localstack.cli') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
