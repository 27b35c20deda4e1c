"""The `epp` command line: every subcommand is where the table says, and a run imports only its own."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_a_command_that_starts_processes_unwinds_on_sigterm_and_restores_the_handler(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """During `epp bench ...` SIGTERM raises SystemExit (so `finally` blocks stop the children);
    an in-process caller gets its own handler back afterwards."""
    import epp.bench.cli as bench_cli
    from epp.cli import main

    seen: list[object] = []

    def spy(args: object) -> int:
        seen.append(signal.getsignal(signal.SIGTERM))
        return 0

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(bench_cli, "run_history", spy)
    assert main(["bench", "history", "--dir", str(tmp_path)]) == 0
    assert seen and seen[0] is not before and callable(seen[0])
    assert signal.getsignal(signal.SIGTERM) is before
    try:
        with pytest.raises(SystemExit) as raised:
            seen[0](signal.SIGTERM, None)  # type: ignore[operator]
        assert raised.value.code == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # a second SIGTERM kills at once
    finally:
        signal.signal(signal.SIGTERM, before)


def test_ctrl_c_during_a_command_that_starts_processes_exits_130_without_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """KeyboardInterrupt reaches main() after the command's `finally` blocks stopped its
    children: one line on stderr and the shell's exit status for SIGINT, not a traceback."""
    import epp.bench.cli as bench_cli
    from epp.cli import main

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(bench_cli, "run_history", interrupted)
    assert main(["bench", "history", "--dir", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "epp bench: interrupted; the processes it started are stopped\n"
    assert signal.getsignal(signal.SIGTERM) is before
