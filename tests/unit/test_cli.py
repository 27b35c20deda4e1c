"""The `epp` command line: every subcommand is where the table says, and a run imports only its own."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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
        # A second SIGTERM ends it at once, children included (the next test).
        assert getattr(signal.getsignal(signal.SIGTERM), "__name__", "") == "_kill_children_and_exit"
    finally:
        signal.signal(signal.SIGTERM, before)


_SLOW_UNWIND = """
import subprocess, sys, time, signal
from epp.cli import _unwind_on_sigterm
signal.signal(signal.SIGTERM, _unwind_on_sigterm)
# A child in a process group of its own (as the benchmarks start pods, Envoy and EPPs), with a
# child of its own.
child = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
print(child.pid, flush=True)
try:
    time.sleep(60)
finally:
    time.sleep(60)  # a stop that takes long: the second SIGTERM comes during it
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2:].split()[0] == b"Z"  # a zombie not reaped yet


def _own_children(child: int) -> list[int]:
    """The children of `child`, once it has one (10 s at most)."""
    found: list[int] = []
    deadline = time.monotonic() + 10
    while not found and time.monotonic() < deadline:
        with contextlib.suppress(OSError), open(f"/proc/{child}/task/{child}/children") as f:
            found = [int(p) for p in f.read().split()]
        time.sleep(0.05)
    return found


def _all_gone(pids: tuple[int, ...]) -> bool:
    """Whether every one of `pids` has exited (10 s at most)."""
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return all(_gone(p) for p in pids)


@contextlib.contextmanager
def _command_and_child(args: list[str], cwd: Path | None = None) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A command that prints its child's pid first, and that child's pid; on the way out, even
    on failure, nothing of either is left running."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=cwd)
    child = 0
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        yield proc, child
    finally:
        proc.kill()
        proc.wait()
        if child:
            with contextlib.suppress(OSError):
                os.killpg(child, signal.SIGKILL)


def test_a_second_sigterm_ends_the_command_and_its_children_at_once() -> None:
    """The first SIGTERM unwinds through the `finally` blocks; a second one during a slow stop
    exits at once, and kills the children's process groups first: exiting alone left them
    running, in groups of their own."""
    with _command_and_child([sys.executable, "-c", _SLOW_UNWIND]) as (proc, child):
        grandchildren = _own_children(child)
        assert grandchildren, "the child's own child did not start"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # unwinding: the slow stop runs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 128 + signal.SIGTERM
        assert _all_gone((child, *grandchildren))


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


_STRAGGLER = """
import os, signal, subprocess, sys, time
import epp.bench.cli as bench_cli
from epp.cli import main

def command(args):
    # A child its owner never learnt of, as when the signal lands inside Popen after the fork:
    # in a process group of its own, with a child of its own, and no `finally` that stops it.
    child = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    print(child.pid, flush=True)
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)

bench_cli.run_history = command
sys.exit(main(["bench", "history", "--dir", sys.argv[1]]))
"""


def test_a_child_the_command_did_not_stop_is_stopped_after_the_sigterm_unwinds(tmp_path: Path) -> None:
    """The first SIGTERM unwinds through the `finally` blocks; a child none of them knew of (the
    signal landed inside Popen after the fork) is stopped before the command exits."""
    with _command_and_child([sys.executable, "-c", _STRAGGLER, str(tmp_path)],
                            cwd=Path(__file__).resolve().parents[2]) as (proc, child):
        grandchildren = _own_children(child)  # the command sends itself SIGTERM 0.5 s after the start
        assert proc.wait(10) == 128 + signal.SIGTERM
        assert grandchildren and _all_gone((child, *grandchildren))
