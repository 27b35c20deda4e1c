"""The generated admin API stubs agree with protos/ (issue 14: "the generated-code check").

The stubs are generated, never edited (epp/admin/protogen.py). Two independent checks:
- the descriptor the loaded module carries equals what protoc itself compiles from
  protos/ right now (a .proto edit that was not regenerated fails here);
- regenerating into a temporary directory reproduces the files on disk byte for byte (a
  hand edit of a generated file fails here).
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from epp.admin import protogen
from epp.admin.proto import SERVICE_NAME, pb
from epp.admin.service import AdminService


def _strip_json_names(fdp: descriptor_pb2.FileDescriptorProto) -> None:
    # protoc's descriptor sets fill json_name; the Python generator leaves it out of the
    # embedded descriptor (it is derived from the field name).
    def walk(msg: descriptor_pb2.DescriptorProto) -> None:
        for f in msg.field:
            f.ClearField("json_name")
        for nested in msg.nested_type:
            walk(nested)

    for m in fdp.message_type:
        walk(m)


def test_loaded_descriptor_is_what_protoc_compiles_from_protos(tmp_path: Path) -> None:
    files = protogen.proto_files()
    assert [p.relative_to(protogen.PROTO_ROOT).as_posix() for p in files] == ["epp/v1/admin.proto"]
    out = tmp_path / "set.pb"
    rc = protoc.main(["protoc", f"-I{protogen.PROTO_ROOT}", f"--descriptor_set_out={out}", *map(str, files)])
    assert rc == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    loaded = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert loaded.name == "epp/_generated/epp/v1/admin.proto"  # the virtual path, see protogen
    fresh.ClearField("name")
    loaded.ClearField("name")
    _strip_json_names(fresh)
    assert loaded == fresh


def test_regenerating_reproduces_the_files_on_disk(tmp_path: Path) -> None:
    written = protogen.generate(tmp_path)
    fresh_root = tmp_path / protogen.VIRTUAL_ROOT
    fresh = {p.relative_to(fresh_root).as_posix(): p.read_bytes() for p in written}
    on_disk = {p.relative_to(protogen.GENERATED_DIR).as_posix(): p.read_bytes()
               for p in protogen.GENERATED_DIR.rglob("*")
               if p.is_file() and p.name != protogen.STAMP and "__pycache__" not in p.parts}
    assert set(fresh) == set(on_disk)
    assert {"epp/v1/admin_pb2.py", "epp/v1/admin_pb2_grpc.py", "epp/v1/admin_pb2.pyi"} <= set(fresh)
    for name, data in fresh.items():
        assert on_disk[name] == data, f"{name} differs from a fresh generation: never edit generated code"


def test_stale_stubs_are_regenerated_on_import_path(tmp_path: Path) -> None:
    # A copy of protos/ with one more field: ensure() must notice and regenerate.
    root = tmp_path / "protos"
    src = protogen.PROTO_ROOT / "epp/v1/admin.proto"
    (root / "epp/v1").mkdir(parents=True)
    (root / "epp/v1/admin.proto").write_text(src.read_text())
    target = tmp_path / "gen"
    assert protogen.ensure(root, target) is True
    assert protogen.ensure(root, target) is False  # stamp matches: nothing to do
    text = src.read_text().replace("message GetPoolRequest {}", "message GetPoolRequest { bool verbose = 1; }")
    (root / "epp/v1/admin.proto").write_text(text)
    assert protogen.ensure(root, target) is True
    assert "verbose" in (target / "epp/v1/admin_pb2.pyi").read_text()


def test_every_rpc_of_the_service_is_implemented() -> None:
    service = pb.DESCRIPTOR.services_by_name["Admin"]
    assert service.full_name == SERVICE_NAME
    methods = {m.name for m in service.methods}
    assert methods == {"Explain", "WatchDecisions", "GetPool"}
    for name in methods:
        assert callable(getattr(AdminService, name, None)), name
