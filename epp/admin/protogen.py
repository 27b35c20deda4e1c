"""Python stubs of the project's own protos (protos/), generated with grpcio-tools.

The generated code is NOT committed: `make install` runs `python -m epp.admin.protogen`, and
importing epp.admin.proto regenerates it when the .proto sources (or the grpcio-tools
version) changed since the last run, so a checkout can never run stale stubs. The output
lives in epp/_generated/ (git-ignored, excluded from ruff/mypy); nobody edits it by hand
(tests/unit/admin/test_protogen.py regenerates it and compares byte for byte).

Module path: the protos' package is `epp.v1`, and protoc names Python modules after the
file's path under its include root, so a plain `-I protos` would generate `epp/v1/...` and
the gRPC stub would `from epp.v1 import ...`, inside OUR `epp` package. protoc's
virtual-path form `--proto_path=epp/_generated=protos` maps the sources to
`epp/_generated/epp/v1/*.proto` instead: modules `epp._generated.epp.v1.admin_pb2(_grpc)`,
while the proto package (and so every gRPC method name, /epp.v1.Admin/Explain) stays `epp.v1`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../epp
PROTO_ROOT = PACKAGE_DIR.parent / "protos"
GENERATED_DIR = PACKAGE_DIR / "_generated"
VIRTUAL_ROOT = "epp/_generated"  # where protoc pretends the sources live (see module docstring)
STAMP = ".source-sha256"


class ProtoGenError(RuntimeError):
    """The stubs are missing or cannot be generated (message says what to run)."""


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(root.rglob("*.proto"))


def source_digest(root: Path = PROTO_ROOT) -> str:
    """Hash of every .proto (path and content) and of the compiler version."""
    import grpc_tools  # type: ignore[import-untyped]

    h = hashlib.sha256()
    h.update(_tools_version().encode())
    for path in proto_files(root):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    _ = grpc_tools  # imported so a missing grpcio-tools fails here, with its own message
    return h.hexdigest()


def _tools_version() -> str:
    from importlib.metadata import version

    return version("grpcio-tools")


def generate(out_dir: Path, root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc (grpcio-tools, in process) over every .proto under `root` into `out_dir`,
    which receives the `epp/_generated/...` tree. Returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    files = proto_files(root)
    if not files:
        raise ProtoGenError(f"no .proto files under {root}")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"--proto_path={VIRTUAL_ROOT}={root}", f"--proto_path={well_known}",
            f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}",
            *(str(f) for f in files)]
    rc = protoc.main(args)
    if rc != 0:
        raise ProtoGenError(f"protoc failed (exit {rc}) on {', '.join(str(f) for f in files)}")
    gen_root = out_dir / VIRTUAL_ROOT
    # Regular packages (not namespace packages), so setuptools ships them in a wheel.
    for d in [gen_root, *(p for p in gen_root.rglob("*") if p.is_dir())]:
        (d / "__init__.py").touch()
    return sorted(p for p in gen_root.rglob("*") if p.is_file())


def ensure(root: Path = PROTO_ROOT, target: Path = GENERATED_DIR) -> bool:
    """Regenerate `target` if the protos changed since it was generated. Returns True when it
    (re)generated. Without a protos/ tree (an installed wheel) the shipped stubs are used."""
    if not root.is_dir():
        # An installed wheel: it ships the stubs (generated before the build), not protos/.
        if not (target / "epp/v1/admin_pb2.py").is_file():
            raise ProtoGenError(f"neither {root} nor generated stubs in {target}: "
                                "reinstall the package (make install)")
        return False
    digest = source_digest(root)
    stamp = target / STAMP
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    # Generate beside the target and swap directories, so a concurrent importer (several
    # `--workers` starting at once) never sees a half-written tree.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix="._generated-") as tmp:
        generate(Path(tmp), root)
        fresh = Path(tmp) / VIRTUAL_ROOT
        (fresh / STAMP).write_text(digest + "\n")
        old = Path(tmp) / "old"
        with contextlib.suppress(FileNotFoundError):
            os.replace(target, old)
        try:
            os.replace(fresh, target)
        except OSError:
            # Another process won the race with identical output: keep theirs.
            if not (target / STAMP).is_file():
                raise
        shutil.rmtree(old, ignore_errors=True)
    return True


def main(argv: list[str] | None = None) -> int:
    try:
        changed = ensure()
    except ProtoGenError as e:
        print(f"epp.admin.protogen: {e}", file=sys.stderr)
        return 1
    print(f"epp.admin.protogen: {'generated' if changed else 'up to date'}: {GENERATED_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
