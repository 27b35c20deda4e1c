"""`python -m epp.latency.build_native`: compile the latency modules with mypyc into the
directory epp/latency/native.py loads them from (`make install` runs it; needs mypy, from the
dev extra, and a C compiler). The build writes a new directory and renames it over the old, with
a manifest naming the sources it was built from, so a running EPP never sees half a build.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from epp.latency.native import (
    CHECKOUT,
    COMPILED_MODULES,
    ENV_DIR,
    ENV_MODE,
    MANIFEST,
    MANIFEST_VERSION,
    abi_tag,
    check_build,
    native_dir,
    source_digest,
)


def build(directory: Path, *, quiet: bool = False) -> Path:
    """Compile COMPILED_MODULES with mypyc into `directory` (replaced as a whole, atomically
    enough: a new directory renamed over the old), with its manifest. Needs mypy (the dev extra)
    and a C compiler. Returns the manifest's path."""
    from mypyc.build import mypycify  # build-time only: mypy is a dev dependency

    # setuptools has no type stubs here; its build_ext is driven the way `setup.py build_ext` would.
    setuptools: Any = importlib.import_module("setuptools")

    t0 = time.monotonic()
    digest = source_digest()
    sources = [str((CHECKOUT / (name.replace(".", "/") + ".py")).relative_to(CHECKOUT)) for name in COMPILED_MODULES]
    directory.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".latency-native-", dir=directory.parent))
    cwd = Path.cwd()
    try:
        # mypyc names modules by their path from the working directory, and reads the mypy
        # configuration (pyproject.toml) there.
        os.chdir(CHECKOUT)
        extensions = mypycify(sources, opt_level="3", target_dir=str(work / "c"))
        dist = setuptools.Distribution({"name": "epp-latency-native", "ext_modules": extensions})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib = str(work / "lib")
        cmd.build_temp = str(work / "tmp")
        cmd.verbose = 0 if quiet else 1
        cmd.ensure_finalized()
        cmd.run()
        files: dict[str, str] = {}
        for ext in extensions:
            built = Path(cmd.get_ext_fullpath(ext.name))
            files[ext.name] = str(built.relative_to(work / "lib"))
        if source_digest() != digest:
            raise RuntimeError("the epp sources changed during the build; run it again")
        manifest = {"version": MANIFEST_VERSION, "abi": abi_tag(), "sourceDigest": digest,
                    "python": sys.version.split()[0], "mypy": _mypy_version(),
                    "builtAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files}
        (work / "lib" / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        verify_loads(work / "lib")  # before it replaces anything: a build that cannot load never does
        old = directory.with_name(directory.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            directory.rename(old)
        (work / "lib").rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        print(f"built {len(COMPILED_MODULES)} latency modules with mypyc into {directory} "
              f"in {time.monotonic() - t0:.0f} s", flush=True)
    return directory / MANIFEST


def verify_loads(directory: Path) -> None:
    """Import every compiled module from the build in `directory`, in a fresh interpreter, with
    EPP_LATENCY_NATIVE=1 (so nothing falls back to the .py files); RuntimeError with its
    stderr if that fails. The EPP checks a build's manifest, not that its libraries load: a
    build that does not would stop every EPP start (an import error), so it must not be
    installed at all."""
    code = ("import importlib; from epp.latency import native; "
            f"[importlib.import_module(m) for m in {list(COMPILED_MODULES)!r}]; "
            "assert native.status().compiled, native.status().reason")
    env = {**os.environ, ENV_MODE: "1", ENV_DIR: str(directory)}
    result = subprocess.run([sys.executable, "-c", code], cwd=CHECKOUT, env=env, capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"the compiled latency modules in {directory} do not load: {tail}")


def _mypy_version() -> str:
    from mypy.version import __version__

    return str(__version__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m epp.latency.build_native",
        description="Build, or show the state of, the mypyc-compiled latency modules (docs/latency-routing.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the latency modules with mypyc (needs mypy and a C compiler)")
    b.add_argument("--dir", type=Path, default=None, help=f"output directory (default: ${ENV_DIR} or {native_dir()})")
    b.add_argument("--if-stale", action="store_true", help="do nothing when the build matches the sources")
    b.add_argument("--best-effort", action="store_true",
                   help="on failure, warn and exit 0: the pure-Python modules run instead")
    b.add_argument("--quiet", action="store_true")
    sub.add_parser("status", help="print whether this checkout would load the compiled modules, and why")
    args = parser.parse_args(argv)
    if args.command == "status":
        files, reason = check_build(native_dir())
        print(("compiled: " if files is not None else "pure Python: ") + reason)
        return 0 if files is not None else 1
    directory: Path = args.dir or native_dir()
    failed = failure_marker(directory)
    if args.if_stale:
        if check_build(directory)[0] is not None:
            (directory / MANIFEST).touch()  # current: newer than the sources for make, too
            return 0
        if args.best_effort and _failed_for_these_sources(failed):
            # Not again on every make: the same sources failed before (no compiler, say).
            print(f"note: the compiled latency modules failed to build for these sources ({failed}); "
                  "the pure-Python modules run. python -m epp.latency.build_native build retries", file=sys.stderr)
            return 0
    if not args.quiet:
        print(f">> compiling the latency modules with mypyc into {directory} (about 20-60 s)", flush=True)
    try:
        build(directory, quiet=args.quiet)
    except (Exception, SystemExit) as e:  # mypyc reports a failed type check as SystemExit
        if not args.best_effort:
            raise
        print(f"warning: the compiled latency modules were not built ({type(e).__name__}: {e}); "
              "the pure-Python modules run instead (slower per decision, same routing)", file=sys.stderr)
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(json.dumps({"abi": abi_tag(), "sourceDigest": source_digest(),
                                      "error": f"{type(e).__name__}: {e}"}) + "\n")
        return 0
    failed.unlink(missing_ok=True)
    return 0


def failure_marker(directory: Path) -> Path:
    """Where a best-effort build that failed records the sources it failed for."""
    return directory.with_name(directory.name + ".failed.json")


def _failed_for_these_sources(marker: Path) -> bool:
    try:
        failed = json.loads(marker.read_text())
        return bool(failed["abi"] == abi_tag() and failed["sourceDigest"] == source_digest())
    except (OSError, ValueError, KeyError, TypeError):
        return False


if __name__ == "__main__":
    sys.exit(main())
