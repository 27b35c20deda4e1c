"""The latency modules compiled with mypyc, used only while they match the sources.

The predicted-latency profile runs the per-candidate loops of runtime.py and the predictor's
arithmetic for every candidate of every decision; compiled, a decision at 64 pods takes 0.89x
the CPU in process, and the EPP serves 1.15x the decisions per core through Envoy
(docs/latency-routing.md, "Cost per decision"). `python -m epp.latency.build_native build` (run by
`make install`) compiles COMPILED_MODULES with mypyc into a directory outside the source tree,
with a manifest of the sources they were built from. On import of `epp.latency`,
`use_compiled_modules()` puts a finder first on `sys.meta_path` that loads those modules from
the build, and only when every `.py` file of the `epp` package still hashes to what the
manifest says: a compiled module also bakes in the types it uses from the rest of the package,
so an edit anywhere in it makes the build stale. A stale, missing or broken build is logged
once and the pure-Python modules run; nothing else changes.

EPP_LATENCY_NATIVE: `auto` (the default) as above; `0` the pure-Python modules always; `1` the
compiled modules or an ImportError naming why not (CI uses it, so that a build that fails is
an error there, not a silent fallback). EPP_LATENCY_NATIVE_DIR: where the build lives (default:
build/latency-native beside the `epp` package, i.e. in the checkout).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

# The modules on the decision path that mypyc compiles as they are. The plugins do not
# compile: mypyc refuses the nested Params dataclass every plugin has.
COMPILED_MODULES = ("epp.latency.runtime", "epp.latency.predictor", "epp.latency.steps", "epp.latency.slo")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
ENV_MODE = "EPP_LATENCY_NATIVE"
ENV_DIR = "EPP_LATENCY_NATIVE_DIR"

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the `epp` package
CHECKOUT = PACKAGE_ROOT.parent


def native_dir() -> Path:
    configured = os.environ.get(ENV_DIR)
    return Path(configured) if configured else CHECKOUT / "build" / "latency-native"


def mode() -> str:
    value = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if value not in ("auto", "0", "1"):
        raise ValueError(f"{ENV_MODE} must be auto, 0 or 1, not {value!r}")
    return value


def abi_tag() -> str:
    """The extension suffix of this interpreter: a build is only loaded by the same ABI."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    return str(suffix) if suffix else "unknown"


def source_digest(root: Path = PACKAGE_ROOT) -> str:
    """sha256 over the relative path and bytes of every .py file of the package, sorted. The
    generated protobuf modules are left out: mypy does not check them (pyproject.toml), so what
    a compiled module knows of their types is Any, and `make install` regenerates them."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts or path.relative_to(root).parts[0] == "_generated":
            continue
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class NativeStatus:
    """Whether the compiled modules are in use, and why (logged, and shown by `status`)."""

    compiled: bool
    reason: str
    directory: Path


class _CompiledModuleFinder(importlib.abc.MetaPathFinder):
    """Finds COMPILED_MODULES (and the mypyc group library they load) in the build."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        return importlib.util.spec_from_file_location(fullname, file)


# The process's one decision (use_compiled_modules): made before the first latency module is
# imported, and never changed after, since imported modules cannot be swapped.
_status: NativeStatus | None = None


class _RefusingFinder(importlib.abc.MetaPathFinder):
    """EPP_LATENCY_NATIVE=1 without a usable build: importing a compiled module is an error."""

    def __init__(self, message: str) -> None:
        self.message = message

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in COMPILED_MODULES:
            raise ImportError(self.message, name=fullname)
        return None


def status() -> NativeStatus:
    """The decision of use_compiled_modules(), made once per process."""
    return _status if _status is not None else use_compiled_modules()


def check_build(directory: Path) -> tuple[dict[str, Path] | None, str]:
    """The module files of the build in `directory` if it can be used here, and why (not)."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return None, f"no build at {directory} (make install, or python -m epp.latency.build_native build)"
    try:
        manifest = json.loads(manifest_path.read_text())
        version, abi, digest = manifest["version"], manifest["abi"], manifest["sourceDigest"]
        files = {name: directory / rel for name, rel in manifest["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return None, f"unreadable manifest {manifest_path}: {e}"
    if version != MANIFEST_VERSION:
        return None, f"build format {version} at {directory}, expected {MANIFEST_VERSION}: rebuild"
    if abi != abi_tag():
        return None, f"build for {abi} at {directory}, this interpreter is {abi_tag()}: rebuild"
    if digest != source_digest():
        return None, f"stale build at {directory}: the epp sources changed since (make install rebuilds it)"
    missing = [name for name in COMPILED_MODULES if name not in files]
    absent = [str(f) for f in files.values() if not f.is_file()]
    if missing or absent:
        return None, f"incomplete build at {directory}: missing {missing or absent}"
    return files, f"compiled with mypyc ({directory})"


def use_compiled_modules() -> NativeStatus:
    """Decide once whether COMPILED_MODULES load from the build, and install the finder if so.
    Called by epp/latency/__init__.py before any of them is imported."""
    global _status
    if _status is not None:
        return _status
    directory = native_dir()
    wanted = mode()
    if wanted == "0":
        _status = NativeStatus(False, f"pure Python ({ENV_MODE}=0)", directory)
        return _status
    if any(name in sys.modules for name in COMPILED_MODULES):
        # Imported before the package decided (only possible by bypassing epp/latency/__init__).
        files, reason = None, "the modules were imported before the build was checked"
    else:
        files, reason = check_build(directory)
    if files is None:
        if wanted == "1":
            # Refused on the import of a compiled module, not of the package: the build tool
            # (build_native.py) imports the package too, and must still run.
            sys.meta_path.insert(0, _RefusingFinder(
                f"{ENV_MODE}=1 but the compiled latency modules cannot be used: {reason}"))
        _status = NativeStatus(False, f"pure Python: {reason}", directory)
        log.info("latency modules: %s", _status.reason)
        return _status
    sys.meta_path.insert(0, _CompiledModuleFinder(files))
    log.info("latency modules: %s", reason)
    _status = NativeStatus(True, reason, directory)
    return _status
