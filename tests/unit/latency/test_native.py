"""The mypyc build of the latency modules (epp/latency/native.py): used only while it matches
the sources, and deciding exactly as the pure-Python modules do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from epp.latency import native
from epp.latency.build_native import build

REPO = Path(__file__).resolve().parents[3]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (native.ENV_MODE, native.ENV_DIR)}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout's build when it matches the sources (make install made it), else a fresh
    one: the comparison below needs a current build either way, and fails if none can be made."""
    current = native.native_dir()
    if native.check_build(current)[0] is not None:
        return current
    directory = tmp_path_factory.mktemp("native") / "latency-native"
    build(directory, quiet=True)
    return directory


def _decisions(mode: str, directory: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "tests.unit.latency.decisions_driver"], cwd=REPO,
                         env=_env(**{native.ENV_MODE: mode, native.ENV_DIR: str(directory)}),
                         capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_the_compiled_modules_decide_as_the_pure_python_ones(build_dir: Path) -> None:
    """600 decisions of the predicted-latency profile on a heterogeneous pool, with refits,
    first bytes and completions on one fake clock: the same picks, the same predictions to the
    last bit, the same virtual queues and the same fitted models."""
    pure = _decisions("0", build_dir)
    compiled = _decisions("1", build_dir)
    assert pure["compiled"] is False and compiled["compiled"] is True
    decisions = pure["decisions"]
    assert isinstance(decisions, list)
    # The run exercises what it compares: predictions, refusals, virtual queues, every pod, and
    # a pod model of its own beside the pooled one.
    assert sum(1 for d in decisions if len(d) > 2 and d[2]) > 400
    assert any(d[1] == "refused" for d in decisions)
    assert any(float(v) > 0.0 for d in decisions if len(d) > 3 for v in d[3].values())
    assert {d[1] for d in decisions if d[1].startswith("vllm-")} == {f"vllm-{i}" for i in range(6)}
    models = pure["models"]
    assert isinstance(models, dict) and models[""] and any(coef for key, coef in models.items() if key)
    assert pure == {**compiled, "compiled": False}


def _manifest(directory: Path, **changes: object) -> None:
    files = {name: f"{name}.so" for name in native.COMPILED_MODULES}
    for rel in files.values():
        (directory / rel).write_bytes(b"")
    manifest: dict[str, object] = {"version": native.MANIFEST_VERSION, "abi": native.abi_tag(),
                                   "sourceDigest": native.source_digest(), "files": files}
    manifest.update(changes)
    (directory / native.MANIFEST).write_text(json.dumps(manifest))


def test_a_build_is_used_only_while_it_matches_the_sources(tmp_path: Path) -> None:
    assert "no build" in native.check_build(tmp_path / "absent")[1]
    _manifest(tmp_path)
    files, reason = native.check_build(tmp_path)
    assert files is not None and set(files) == set(native.COMPILED_MODULES), reason
    _manifest(tmp_path, sourceDigest="0" * 64)
    assert native.check_build(tmp_path) == (None, f"stale build at {tmp_path}: the epp sources changed "
                                                   "since (make install rebuilds it)")
    _manifest(tmp_path, abi=".cpython-39-x86_64-linux-gnu.so")
    assert "this interpreter is" in native.check_build(tmp_path)[1]
    _manifest(tmp_path, version=native.MANIFEST_VERSION + 1)
    assert "rebuild" in native.check_build(tmp_path)[1]
    _manifest(tmp_path, files={"epp.latency.runtime": "epp.latency.runtime.so"})
    assert "incomplete build" in native.check_build(tmp_path)[1]
    (tmp_path / native.MANIFEST).write_text("{not json")
    assert "unreadable manifest" in native.check_build(tmp_path)[1]


def test_an_edit_to_any_source_makes_the_build_stale(tmp_path: Path) -> None:
    """The digest covers every .py file of the package (a compiled module bakes in the types it
    uses from the others), except the generated protobuf modules."""
    package = tmp_path / "epp"
    (package / "latency").mkdir(parents=True)
    (package / "_generated").mkdir()
    (package / "latency" / "runtime.py").write_text("x = 1\n")
    (package / "datastore.py").write_text("y = 1\n")
    (package / "_generated" / "api_pb2.py").write_text("z = 1\n")
    digest = native.source_digest(package)
    (package / "_generated" / "api_pb2.py").write_text("z = 2\n")
    assert native.source_digest(package) == digest
    (package / "datastore.py").write_text("y = 2\n")
    assert native.source_digest(package) != digest


def _status_in_subprocess(**env: str) -> subprocess.CompletedProcess[str]:
    code = ("import epp.latency.runtime as r; from epp.latency import native; "
            "s = native.status(); print(s.compiled, r.__file__.endswith('.py'))")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(**env),
                          capture_output=True, text=True, timeout=60)


def test_the_mode_switch(tmp_path: Path, build_dir: Path) -> None:
    """auto falls back to the .py files without a usable build; 1 refuses to; 0 never loads it."""
    out = _status_in_subprocess(**{native.ENV_DIR: str(tmp_path)})
    assert out.returncode == 0 and out.stdout.split() == ["False", "True"], out.stderr
    out = _status_in_subprocess(**{native.ENV_DIR: str(tmp_path), native.ENV_MODE: "1"})
    assert out.returncode != 0 and "EPP_LATENCY_NATIVE=1 but the compiled latency modules cannot be used" in out.stderr
    out = _status_in_subprocess(**{native.ENV_DIR: str(build_dir), native.ENV_MODE: "0"})
    assert out.returncode == 0 and out.stdout.split() == ["False", "True"], out.stderr
    out = _status_in_subprocess(**{native.ENV_DIR: str(build_dir)})
    assert out.returncode == 0 and out.stdout.split() == ["True", "False"], out.stderr
    out = _status_in_subprocess(**{native.ENV_MODE: "yes"})
    assert out.returncode != 0 and "EPP_LATENCY_NATIVE must be auto, 0 or 1" in out.stderr


def test_a_failed_best_effort_build_is_not_retried_for_the_same_sources(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without a C compiler every make would spend its seconds failing again: the failure is
    recorded with the sources' digest, and `--if-stale --best-effort` skips those sources."""
    from epp.latency import build_native

    calls: list[Path] = []

    def failing_build(directory: Path, *, quiet: bool = False) -> Path:
        calls.append(directory)
        raise SystemExit("error: command 'gcc' failed: No such file or directory")

    monkeypatch.setattr(build_native, "build", failing_build)
    directory = tmp_path / "latency-native"
    args = ["build", "--if-stale", "--best-effort", "--quiet", "--dir", str(directory)]
    assert build_native.main(args) == 0 and len(calls) == 1
    assert "gcc" in capsys.readouterr().err
    marker = build_native.failure_marker(directory)
    assert json.loads(marker.read_text())["sourceDigest"] == native.source_digest()
    assert build_native.main(args) == 0 and len(calls) == 1  # the same sources: not again
    assert "failed to build for these sources" in capsys.readouterr().err
    marker.write_text(json.dumps({"abi": native.abi_tag(), "sourceDigest": "0" * 64}))
    assert build_native.main(args) == 0 and len(calls) == 2  # other sources: tried again
    with pytest.raises(SystemExit):  # without --best-effort the failure is the caller's
        build_native.main(["build", "--dir", str(directory)])


def test_a_build_whose_libraries_do_not_load_is_never_installed(tmp_path: Path) -> None:
    """Its manifest matches (all the EPP checks at start), but its libraries are not loadable:
    the build tool's import check refuses it before it could replace a working build."""
    from epp.latency.build_native import verify_loads

    _manifest(tmp_path)  # empty files where the libraries should be
    assert native.check_build(tmp_path)[0] is not None
    with pytest.raises(RuntimeError, match="do not load"):
        verify_loads(tmp_path)


def test_a_working_build_passes_the_import_check(build_dir: Path) -> None:
    from epp.latency.build_native import verify_loads

    verify_loads(build_dir)
