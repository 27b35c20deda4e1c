"""A real scheduler (loaded from a config by the real loader), datastore, in-flight tracker,
ext_proc handler and admin service wired as `epp serve` wires them, for the admin tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from epp.admin.feed import DecisionExplainer
from epp.admin.proto import pb
from epp.admin.service import AdminService, AdminState
from epp.admin.stats import DecisionStatsCollector, TeeObserver
from epp.config.loader import load_scheduler_config
from epp.datastore.datastore import Datastore
from epp.datastore.endpoint import ROLE_LABEL, Endpoint, EndpointMetrics
from epp.datastore.inflight import SERVICE_KEY as INFLIGHT_KEY
from epp.datastore.inflight import InflightTracker
from epp.scheduling.registry import PluginContext
from epp.server.extproc import ExtProcHandler, NullObserver

REPO = Path(__file__).resolve().parents[3]
PD_CONFIG = REPO / "deploy/vllm/pd/epp-config-pd.yaml"


@dataclass
class Rig:
    datastore: Datastore
    ctx: PluginContext
    tracker: InflightTracker
    handler: ExtProcHandler
    service: AdminService
    explainer: DecisionExplainer
    stats: DecisionStatsCollector
    scheduler: Any


def rig(config: Path | None = None, roles: list[str] | None = None, pods: int = 4,
        explain_header: bool = False) -> Rig:
    ds = Datastore()
    for i, role in enumerate(roles or [""] * pods):
        labels = {ROLE_LABEL: role} if role else {}
        ds.upsert_endpoint(Endpoint(name=f"pod-{i}", address="127.0.0.1", port=8000 + i, labels=labels,
                                    metrics=EndpointMetrics(updated_at=1.0)))
    ctx = PluginContext(ds, source=str(config or "<default>"))
    tracker = InflightTracker(ds)
    ctx.services[INFLIGHT_KEY] = tracker
    scheduler = load_scheduler_config(config, ctx).scheduler
    stats = DecisionStatsCollector()
    handler = ExtProcHandler(ds, lambda: scheduler, observer=TeeObserver(NullObserver(), stats), tracker=tracker)
    explainer = DecisionExplainer(header_enabled=explain_header, datastore=ds,
                                  max_fallbacks=handler.options.max_fallbacks)
    handler.explainer = explainer
    state = AdminState(ds, lambda: scheduler, handler.decisions, explainer, stats, ctx.services,
                       handler.options.max_fallbacks, str(config or ""))
    return Rig(ds, ctx, tracker, handler, AdminService(state), explainer, stats, scheduler)


def explain(r: Rig, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return r.service.explain(pb.ExplainRequest(body=json.dumps(body).encode(), headers=headers or {}))


def ext_messages(body: dict[str, Any], headers: dict[str, str] | None = None, path: str = "/v1/completions",
                 response_status: int | None = None) -> list[ext.ProcessingRequest]:
    hm = base_pb2.HeaderMap()
    for k, v in {":method": "POST", ":path": path, "x-request-id": "rid", **(headers or {})}.items():
        hm.headers.add(key=k, raw_value=v.encode())
    msgs = [ext.ProcessingRequest(request_headers=ext.HttpHeaders(headers=hm)),
            ext.ProcessingRequest(request_body=ext.HttpBody(body=json.dumps(body).encode(), end_of_stream=True))]
    if response_status is not None:
        rh = base_pb2.HeaderMap()
        rh.headers.add(key=":status", raw_value=str(response_status).encode())
        msgs.append(ext.ProcessingRequest(response_headers=ext.HttpHeaders(headers=rh)))
    return msgs


async def route(r: Rig, body: dict[str, Any], headers: dict[str, str] | None = None,
                response_status: int | None = None) -> list[ext.ProcessingResponse]:
    """One request through the real ext_proc handler; the stream ends (in-flight released)."""
    async def gen() -> AsyncIterator[ext.ProcessingRequest]:
        for m in ext_messages(body, headers, response_status=response_status):
            yield m

    out = []
    async for raw in r.handler.process(gen(), None):
        out.append(ext.ProcessingResponse.FromString(raw))
    return out


def set_headers(resp: ext.ProcessingResponse) -> dict[str, str]:
    which = resp.WhichOneof("response")
    common = getattr(resp, which).response
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def destination(responses: list[ext.ProcessingResponse]) -> tuple[str, dict[str, str]]:
    for resp in responses:
        if resp.WhichOneof("response") in ("request_headers", "request_body"):
            hdrs = set_headers(resp)
            if "x-gateway-destination-endpoint" in hdrs:
                return hdrs["x-gateway-destination-endpoint"], hdrs
    raise AssertionError(f"no destination in {responses}")
