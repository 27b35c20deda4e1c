"""Through the real Envoy: clients cannot steer the upstream, and bad input never becomes a 500.

Every routing header a client could send (x-gateway-destination-endpoint and its -*
variants, x-prefiller-host-port, x-prefiller-url) points at a canary: a loopback HTTP
server that must receive nothing, whatever the mode (BUFFERED, STREAMED,
FULL_DUPLEX_STREAMED, FailOpen with the EPP down, P/D with routing sidecars).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from epp.localstack.envoy_config import EnvoyConfigParams, render_envoy_config
from epp.localstack.stack import LocalStack, free_ports
from tests.helpers.procs import REPO, Proc, envoy_binary, wait_http
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PD_CONFIG = REPO / "deploy/vllm/pd/epp-config-pd.yaml"


class Canary:
    """A loopback HTTP server that records every request it gets (it must get none)."""

    def __init__(self) -> None:
        hits: list[str] = []
        self.hits = hits

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                hits.append(f"{self.command} {self.path}")
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"canary": true}')

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _record

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    c = Canary()
    yield c
    c.close()


def _spoofs(canary: Canary) -> list[dict[str, str]]:
    hp = canary.hostport
    return [
        {"x-gateway-destination-endpoint": hp},
        {"X-Gateway-Destination-Endpoint": hp},
        {"x-gateway-destination-endpoint-served": hp},
        {"x-gateway-destination-endpoint-fallback": hp},
        {"x-prefiller-host-port": hp},
        {"x-prefiller-url": f"http://{hp}"},
        {"x-gateway-destination-endpoint": hp, "x-prefiller-host-port": hp, "x-prefiller-url": hp},
    ]


def _pool_hostports(stack: LocalStack) -> set[str]:
    return {f"127.0.0.1:{p.serving_port}" for p in stack.pods}


def _assert_spoofs_land_in_the_pool(stack: LocalStack, canary: Canary, prompt: str = "hello there") -> None:
    pool = _pool_hostports(stack)
    with httpx.Client(timeout=30) as client:
        for headers in _spoofs(canary):
            r = client.post(f"{stack.url}/v1/completions", headers=headers,
                            json={"model": MODEL, "prompt": prompt, "max_tokens": 2})
            assert r.status_code == 200, (headers, r.status_code, r.text, stack.tail("envoy"))
            assert r.headers["x-gateway-destination-endpoint-served"] in pool, headers
            r = client.get(f"{stack.url}/v1/models", headers=headers)
            assert r.status_code == 200 and r.headers["x-gateway-destination-endpoint-served"] in pool
    assert canary.hits == [], canary.hits


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory) -> LocalStack:
    return stack_factory(pods=2, time_scale=0.05, kv_events=False)


def test_streamed_client_routing_headers_never_reach_the_canary(stack: LocalStack, canary: Canary) -> None:
    _assert_spoofs_land_in_the_pool(stack, canary)  # the generated default: STREAMED


def test_buffered_client_routing_headers_never_reach_the_canary(
        stack_factory: StackFactory, canary: Canary) -> None:
    _assert_spoofs_land_in_the_pool(
        stack_factory(pods=2, time_scale=0.05, kv_events=False, request_body_mode="BUFFERED"), canary)


def test_full_duplex_client_routing_headers_never_reach_the_canary(
        stack_factory: StackFactory, canary: Canary) -> None:
    fd = stack_factory(pods=2, time_scale=0.05, kv_events=False, request_body_mode="FULL_DUPLEX_STREAMED")
    _assert_spoofs_land_in_the_pool(fd, canary)
    with httpx.Client(timeout=30) as client:  # bodyless answers hold in full-duplex mode too
        r = client.request("GET", f"{fd.url}/v1/models", content=iter([b""]))  # chunked, empty
        assert r.status_code == 200 and r.json()["data"], r.text
        _json_error(client.post(f"{fd.url}/v1/nope", json={"model": MODEL}), 404, "not_found")
        _json_error(client.post(f"{fd.url}/v1/completions", content=b"[" * 100_000), 400)


def test_failopen_with_the_epp_down_still_strips_routing_headers(
        stack_factory: StackFactory, canary: Canary) -> None:
    """Envoy's early header mutation strips them (before the route is picked) when the EPP is
    not there to."""
    fo = stack_factory(pods=2, time_scale=0.05, kv_events=False, failure_mode="FailOpen")
    fo.stop_one("epp")
    _assert_spoofs_land_in_the_pool(fo, canary)


def test_pd_client_prefill_headers_never_reach_the_canary(stack_factory: StackFactory, canary: Canary) -> None:
    pd = stack_factory(pd=True, epp_config=PD_CONFIG, time_scale=0.05, kv_events=False)
    long_prompt = "Summarize the history of the printing press in detail. " * 40  # remote prefill
    _assert_spoofs_land_in_the_pool(pd, canary, long_prompt)
    # The EPP's own prefill header still works: the first long prompt was prefilled remotely.
    with httpx.Client(timeout=30) as client:
        fresh = "Describe the water cycle step by step, with examples. " * 40
        r = client.post(f"{pd.url}/v1/completions", headers={"x-prefiller-host-port": canary.hostport},
                        json={"model": MODEL, "prompt": fresh, "max_tokens": 2})
        assert r.status_code == 200 and int(r.headers["x-sim-kv-transferred-tokens"]) > 256, r.headers
        # Straight to a decode pod's sidecar, bypassing Envoy: its own allowlist (the pool) refuses.
        sidecar = next(p for p in pd.pods if p.sidecar_port)
        for header in ("x-prefiller-host-port", "x-prefiller-url"):
            r = client.post(f"http://127.0.0.1:{sidecar.sidecar_port}/v1/completions",
                            headers={header: canary.hostport},
                            json={"model": MODEL, "prompt": fresh, "max_tokens": 2})
            assert r.status_code == 403, r.text
    assert canary.hits == [], canary.hits


# --- bad input -------------------------------------------------------------------------------

def _json_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert isinstance(err, dict) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def test_deeply_nested_json_is_a_400(stack: LocalStack) -> None:
    deep = b'{"model": "m", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(f"{stack.url}/v1/completions", content=deep,
                   headers={"content-type": "application/json"}, timeout=30)
    _json_error(r, 400, "invalid_json")


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00", b"[]", b'"x"', b'{"model": 1}',
                                  b'{"model": "m", "prompt": {"a": 1}}', b"null"])
def test_other_parse_failures_are_400(stack: LocalStack, body: bytes) -> None:
    r = httpx.post(f"{stack.url}/v1/completions", content=body,
                   headers={"content-type": "application/json"}, timeout=30)
    _json_error(r, 400)


def test_unknown_path_is_an_openai_json_404(stack: LocalStack) -> None:
    r = httpx.post(f"{stack.url}/v1/nope", json={"model": MODEL, "prompt": "x"}, timeout=30)
    err = _json_error(r, 404, "not_found")
    assert "/v1/nope" in str(err["message"])
    _json_error(httpx.get(f"{stack.url}/", timeout=30), 404, "not_found")
    # Engine admin endpoints are not reachable through the gateway.
    _json_error(httpx.post(f"{stack.url}/v1/load_lora_adapter", json={"lora_name": "x"}, timeout=30), 404)


def test_bodyless_methods_get_correct_answers(stack: LocalStack) -> None:
    with httpx.Client(timeout=30) as client:
        r = client.get(f"{stack.url}/v1/completions")
        _json_error(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "POST, OPTIONS"
        r = client.delete(f"{stack.url}/v1/chat/completions")
        _json_error(r, 405, "method_not_allowed")
        r = client.head(f"{stack.url}/v1/chat/completions")
        assert r.status_code == 405 and r.headers["allow"] == "POST, OPTIONS"
        r = client.options(f"{stack.url}/v1/chat/completions")
        assert r.status_code == 204 and r.headers["allow"] == "POST, OPTIONS" and r.content == b""
        r = client.options(f"{stack.url}/v1/models")
        assert r.status_code == 204 and r.headers["allow"] == "GET, HEAD, OPTIONS"
        r = client.get(f"{stack.url}/v1/models")
        assert r.status_code == 200 and r.json()["data"]
        r = client.head(f"{stack.url}/health")
        assert r.status_code == 200
        r = client.request("GET", f"{stack.url}/v1/models", content=iter([b""]))  # chunked, empty
        assert r.status_code == 200 and r.json()["data"], r.text
        r = client.request("GET", f"{stack.url}/v1/models", content=b'{"x": 1}')
        _json_error(r, 400, "unexpected_body")
        r = client.delete(f"{stack.url}/v1/models")
        _json_error(r, 405, "method_not_allowed")
        r = client.post(f"{stack.url}/v1/completions")  # no body at all
        _json_error(r, 400, "invalid_request_body")


# --- the EPP alone, behind a gateway that strips nothing -------------------------------------

class _BareEnvoy:
    """The stack's Envoy config without its early header mutation: like a gateway that does
    not strip routing headers itself, so only the EPP's header mutation protects the pool."""

    def __init__(self, stack: LocalStack, tmp: Path) -> None:
        listen, admin = free_ports(2)
        params = EnvoyConfigParams(listen_port=listen, admin_port=admin, epp_port=stack.cfg.grpc_port)
        config = render_envoy_config(params)
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        del hcm["early_header_mutation_extensions"]
        (tmp / "envoy-bare.yaml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{listen}"
        self.proc = Proc([envoy_binary(), "-c", str(tmp / "envoy-bare.yaml"), "--concurrency", "1",
                          "--base-id", str(admin), "--log-level", "warn"], tmp / "envoy-bare.log")
        wait_http(f"http://127.0.0.1:{admin}/ready")


@pytest.mark.parametrize("pd", [False, True], ids=["plain", "pd"])
def test_the_epp_alone_removes_client_routing_headers(
        stack_factory: StackFactory, canary: Canary, tmp_path: Path, pd: bool) -> None:
    kwargs: dict[str, object] = {"pd": True, "epp_config": PD_CONFIG} if pd else {"pods": 2}
    st = stack_factory(time_scale=0.05, kv_events=False, with_envoy=False, **kwargs)
    envoy = _BareEnvoy(st, tmp_path)
    pool = _pool_hostports(st)
    try:
        with httpx.Client(timeout=30) as client:
            for headers in _spoofs(canary):
                # Short prompt: in P/D no remote prefill, so the EPP sets no prefiller header
                # of its own and a client's must be removed, not overwritten.
                r = client.post(f"{envoy.url}/v1/completions", headers=headers,
                                json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
                assert r.status_code == 200, (headers, r.text, envoy.proc.output()[-2000:])
                assert r.headers["x-gateway-destination-endpoint-served"] in pool
                if pd:
                    assert r.headers["x-sim-kv-transferred-tokens"] == "0"
            if pd:
                # Remote prefill: the EPP removes the client's x-prefiller-host-port and sets its
                # own in one mutation; Envoy applies the removal first, so the EPP's survives.
                r = client.post(f"{envoy.url}/v1/completions",
                                headers={"x-prefiller-host-port": canary.hostport},
                                json={"model": MODEL, "prompt": "Tell me about tides. " * 120,
                                      "max_tokens": 2})
                assert r.status_code == 200 and int(r.headers["x-sim-kv-transferred-tokens"]) > 256
    finally:
        envoy.proc.stop()
    assert canary.hits == [], canary.hits
