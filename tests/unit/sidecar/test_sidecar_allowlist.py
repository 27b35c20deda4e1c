"""The sidecar's prefill-target allowlist: pool members and explicit entries only."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import yaml

from epp.datastore import Datastore, Endpoint
from epp.datastore.local import LocalEndpointSource
from epp.sidecar.allowlist import PrefillAllowlist
from epp.sidecar.server import SidecarConfig, SidecarServer
from tests.unit.sidecar.stub_engines import StubEngine, serving

PROMPT = {"model": "stub-model", "prompt": "a long prompt " * 50, "max_tokens": 4}


def _pool(*hostports: str) -> Datastore:
    ds = Datastore()
    for i, hp in enumerate(hostports):
        host, port = hp.rsplit(":", 1)
        ds.upsert_endpoint(Endpoint(name=f"pod{i}", address=host, port=int(port)))
    return ds


def test_pool_members_are_allowed_by_host_and_port() -> None:
    allow = PrefillAllowlist(pool=_pool("10.0.0.1:8000", "10.0.0.2:8000"))
    assert allow.allows("10.0.0.1:8000") and allow.allows("10.0.0.2:8000")
    assert not allow.allows("10.0.0.1:8001")  # same host, another port: not a pool member
    assert not allow.allows("10.0.0.3:8000")
    assert not allow.empty


def test_pool_changes_are_seen_at_once() -> None:
    ds = _pool("10.0.0.1:8000")
    allow = PrefillAllowlist(pool=ds)
    ds.upsert_endpoint(Endpoint(name="new", address="10.0.0.9", port=8000))
    assert allow.allows("10.0.0.9:8000")
    ds.remove_endpoint(ds.by_hostport("10.0.0.1:8000").key)  # type: ignore[union-attr]
    assert not allow.allows("10.0.0.1:8000")


def test_explicit_entries_host_port_and_host_only() -> None:
    allow = PrefillAllowlist(["10.0.0.5:9000", "prefill.svc", " ", "[fd00::1]:8000"])
    assert allow.allows("10.0.0.5:9000") and not allow.allows("10.0.0.5:9001")
    assert allow.allows("prefill.svc:1234") and allow.allows("PREFILL.svc:80")
    assert allow.allows("[fd00::1]:8000") and not allow.allows("[fd00::2]:8000")


@pytest.mark.parametrize("target", [
    "10.0.0.5:9000/evil", "user@10.0.0.5:9000", "10.0.0.5:9000?x=1", "10.0.0.5:9000#f",
    "10.0.0.5:9000 ", "evil.com:80@10.0.0.5:9000", "", "10.0.0.5:99999999",
])
def test_targets_that_could_change_the_url_are_refused(target: str) -> None:
    allow = PrefillAllowlist(["10.0.0.5:9000", "10.0.0.5"], pool=_pool("10.0.0.5:9000"))
    assert not allow.allows(target)


def test_nothing_configured_allows_nothing() -> None:
    allow = PrefillAllowlist()
    assert allow.empty and not allow.allows("127.0.0.1:8000")


async def test_sidecar_refuses_a_canary_outside_the_pool_and_serves_pool_members(tmp_path: Path) -> None:
    """The local pool source (the EPP's files) is the allowlist: a target outside it is never
    contacted, a member is prefilled on."""
    prefill, decode, canary = StubEngine("prefill"), StubEngine("decode"), StubEngine("canary")
    async with AsyncExitStack() as stack:
        prefill_port = await stack.enter_async_context(serving(prefill.app()))
        decode_port = await stack.enter_async_context(serving(decode.app()))
        canary_port = await stack.enter_async_context(serving(canary.app()))
        pool_file, endpoints_file = tmp_path / "pool.yaml", tmp_path / "endpoints.yaml"
        pool_file.write_text(yaml.safe_dump({
            "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "p"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "targetPorts": [{"number": 8000}],
                     "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}}}))
        endpoints_file.write_text(yaml.safe_dump({"pods": [
            {"name": "prefill", "ip": "127.0.0.1", "port": prefill_port, "labels": {"app": "x"}},
            {"name": "decode", "ip": "127.0.0.1", "port": decode_port, "labels": {"app": "x"}}]}))
        pool = Datastore()
        source = LocalEndpointSource(pool, pool_file, endpoints_file)
        await source.start()
        stack.push_async_callback(source.stop)
        config = SidecarConfig(decoder_url=f"http://127.0.0.1:{decode_port}",
                               pool_file=str(pool_file), endpoints_file=str(endpoints_file))
        sidecar = SidecarServer(config, pool)
        port = await stack.enter_async_context(serving(sidecar.runner()))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for header in ("x-prefiller-host-port", "x-prefiller-url"):
                for value in (f"127.0.0.1:{canary_port}", f"http://127.0.0.1:{canary_port}"):
                    r = await client.post("/v1/completions", json=PROMPT, headers={header: value})
                    assert r.status_code == 403, (header, value, r.text)
            assert canary.received == [] and decode.received == []
            r = await client.post("/v1/completions", json=PROMPT,
                                  headers={"x-prefiller-host-port": f"127.0.0.1:{prefill_port}"})
            assert r.status_code == 200 and len(prefill.received) == 1 and len(decode.received) == 1
        value = sidecar.metrics.registry.get_sample_value("epp_sidecar_prefill_errors_total",
                                                          {"reason": "forbidden"})
        assert value == 4
