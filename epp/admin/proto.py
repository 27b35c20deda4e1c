"""The generated admin API modules (epp/v1/admin.proto), regenerated first when stale.

Import `pb` (messages) and `pb_grpc` (service stubs) from here, never from epp._generated
directly: this import is what keeps the stubs in step with protos/ (see protogen.py).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from epp.admin.protogen import ensure

ensure()

pb: ModuleType = importlib.import_module("epp._generated.epp.v1.admin_pb2")
pb_grpc: ModuleType = importlib.import_module("epp._generated.epp.v1.admin_pb2_grpc")

SERVICE_NAME = "epp.v1.Admin"

__all__ = ["SERVICE_NAME", "pb", "pb_grpc"]
