"""`python -m epp.admin.demo`: the admin API on the local P/D stack, end to end.

Starts the local stack (simulated pods, Envoy, `epp serve --admin-port --explain-header`) on
free loopback ports, sends a few chat requests sharing a system prompt, then prints what
`epp explain`, `epp top --once` and the x-epp-explain debug header show, and stops
everything. The outputs in docs/admin-api.md come from this command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from epp.localstack.stack import LocalStack, StackConfig, free_ports

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SYSTEM = "You are a support agent for an airline. Be precise, cite the fare rules. " * 20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m epp.admin.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=12, help="chat requests sent before explaining (12)")
    args = ap.parse_args(argv)
    port = free_ports(1)[0]
    run = Path(tempfile.mkdtemp(prefix="epp-admin-demo-"))
    stack = LocalStack(StackConfig(ports_free=True, run_dir=run, pd=True, time_scale=0.1, kv_events=False,
                                   response_body_mode="STREAMED",
                                   epp_args=["--admin-port", str(port), "--explain-header"]))
    stack.start(timeout=90)
    try:
        with httpx.Client(timeout=60, trust_env=False) as client:
            for i in range(args.requests):
                r = client.post(f"{stack.url}/v1/chat/completions", json=_body(f"question {i}", 8))
                r.raise_for_status()
            body = run / "body.json"
            body.write_text(json.dumps(_body("Can I change my flight?", 64)))
            address = f"127.0.0.1:{port}"
            for cmd in (["explain", "--address", address, "-d", f"@{body}", "-H", "x-request-id: demo-1"],
                        ["top", "--address", address, "--once"]):
                print("$ epp " + shlex.join(cmd).replace(str(body), "body.json"), flush=True)
                out = subprocess.run([sys.executable, "-m", "epp", *cmd], capture_output=True, text=True,
                                     timeout=60, check=False)
                print(out.stdout + out.stderr, flush=True)
            r = client.post(f"{stack.url}/v1/chat/completions", headers={"x-epp-explain": "1"},
                            json=_body("And my baggage allowance?", 8))
            print(f"$ curl ... -H 'x-epp-explain: 1'\nx-epp-explain: {r.headers.get('x-epp-explain')}")
    finally:
        stack.stop()
    return 0


def _body(question: str, max_tokens: int) -> dict[str, object]:
    return {"model": MODEL, "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}


if __name__ == "__main__":
    raise SystemExit(main())
