"""`epp explain` and `epp top --once` against a live admin server (the CLI's own entry point,
once as a subprocess as a user runs it), and the curl-style input parsing."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from epp.admin.cli import InputError, parse_curl, read_input
from epp.admin.options import AdminOptions
from epp.admin.server import AdminServer
from epp.cli import main
from tests.unit.admin.harness import PD_CONFIG, REPO, route
from tests.unit.admin.harness import rig as make_rig

BODY = {"model": "m", "messages": [{"role": "user", "content": "Plan a week in Lisbon. " * 60}],
        "max_tokens": 32}


def test_curl_file_gives_path_headers_and_body(tmp_path: Path) -> None:
    (tmp_path / "body.json").write_text(json.dumps(BODY))
    cmd = tmp_path / "req.sh"
    cmd.write_text("# a saved request\ncurl -sS -X POST http://localhost:8081/v1/chat/completions \\\n"
                   "  -H 'Content-Type: application/json' \\\n  -H 'x-gateway-inference-objective: premium' \\\n"
                   "  -d @body.json\n")
    req = read_input(None, None, ["X-Extra: 1"], "", cmd)
    assert req.path == "/v1/chat/completions"
    assert req.headers == {"content-type": "application/json", "x-gateway-inference-objective": "premium",
                           "x-extra": "1"}
    assert json.loads(req.body) == BODY
    inline = parse_curl("curl http://h/v1/completions --data-raw '{\"model\": \"m\"}'", tmp_path)
    assert inline.path == "/v1/completions" and json.loads(inline.body) == {"model": "m"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "no request body"),
    ({"body": "{not json"}, "not JSON"),
    ({"body": "{}", "headers": ["no-colon"]}, "not 'name: value'"),
    ({"data": "@/nonexistent/body.json"}, "-d @/nonexistent/body.json"),
])
def test_bad_input_is_named(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"body": None, "data": None, "headers": [], "path": "", "curl": None, **kwargs}
    with pytest.raises(InputError, match=message):
        read_input(**args)  # type: ignore[arg-type]


async def _epp(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "epp", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`epp ARGS` in a worker thread (it runs its own event loop) while the server runs here."""
    capsys.readouterr()
    rc = await asyncio.to_thread(main, list(args))
    out, err = capsys.readouterr()
    return rc, out, err


async def test_epp_explain_and_top_against_a_live_admin_api(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    r = make_rig(PD_CONFIG, roles=["prefill", "decode", "decode"])
    r.datastore.endpoints()[1].metrics.waiting_queue_size = 4
    await route(r, {"model": "m", "prompt": "warm up " * 10, "max_tokens": 4})
    server = AdminServer(AdminOptions(port=0, enabled=True), r.service.state)
    await server.start()
    try:
        (tmp_path / "body.json").write_text(json.dumps(BODY))
        address = f"127.0.0.1:{server.port}"
        rc, out, err = await _main(capsys, "explain", "--address", address, "-d", f"@{tmp_path / 'body.json'}",
                                   "-H", "x-request-id: cli-1")
        assert rc == 0, err
        assert "request cli-1" in out and "(dry run)" in out
        assert "destination: default/pod-2 (127.0.0.1:8002)" in out  # pod-1 has a queue
        assert "P/D: remote prefill on 127.0.0.1:8000" in out
        assert "queue-scorer x2" in out and "prefix-cache-scorer x3" in out
        assert "filtered out" in out and "label llm-d.ai/role=prefill not in" in out
        rc, out, _ = await _main(capsys, "explain", "--address", address, "--json", json.dumps(BODY))
        assert rc == 0 and json.loads(out)["target"] == "default/pod-2"
        rc, out, err = await _main(capsys, "explain", "--address", address, "{\"model\": \"m\"}")
        assert rc == 3 and "refused: HTTP 400" in out  # no prompt: the EPP would refuse it

        rc, out, err = await _epp("top", "--address", address, "--once")
        assert rc == 0, err
        lines = out.splitlines()
        assert "decisions 1" in lines[0]
        assert any("pod-0" in ln and "prefill" in ln for ln in lines)
        assert "decisions/s" in out and "KV use" in out and "hit rate" in out
    finally:
        await server.stop()
    rc, _, err = await _main(capsys, "top", "--address", address, "--once", "--timeout", "1")
    assert rc == 1 and "UNAVAILABLE" in err
