"""`epp explain` and `epp top`: the admin API (epp.v1.Admin) from a terminal.

`epp explain` sends a request body (and headers) to Explain and prints where the EPP would
route it and why, as tables: per profile the filtered-out pods with the reason, each
scorer's raw and weighted score per pod, the prefix match, the pick and the P/D decision.
Input: a JSON body (`epp explain '{"model": ...}'`), curl-style flags (`-d @body.json -H
'k: v'`), or a saved curl command (`--curl request.sh`).

`epp top` polls GetPool and redraws a table in place (rich's Live display): per pod queue,
running, KV-cache use, in-flight, decisions/s, prefix hit rate, metrics age and health.
`--once` (or a non-terminal stdout) prints frames instead of redrawing, for scripts and tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from epp.admin.options import TOKEN_ENV

DEFAULT_ADDRESS = "127.0.0.1:9005"
ADDRESS_ENV = "EPP_ADMIN_ADDRESS"


class InputError(ValueError):
    """The request to explain cannot be read (message says which argument)."""


@dataclass(slots=True)
class ExplainInput:
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    path: str = ""


def add_parser(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", default=os.environ.get(ADDRESS_ENV, DEFAULT_ADDRESS),
                        help=f"admin API host:port (${ADDRESS_ENV}, default {DEFAULT_ADDRESS})")
    common.add_argument("--token-file", type=Path, default=None,
                        help=f"bearer token file (or ${TOKEN_ENV}); needed when the admin API is exposed")
    common.add_argument("--timeout", type=float, default=5.0, help="seconds per call (5)")

    p = sub.add_parser("explain", parents=[common], help="why would the EPP route this request there?",
                       description="Dry-run a request through the serving EPP's scheduler and print the "
                                   "decision: filters, scores per pod, prefix match, pick, P/D.")
    p.add_argument("body", nargs="?", default=None, help="the JSON request body (or use -d / --curl)")
    p.add_argument("-d", "--data", default=None, help="body, or @file (curl style; @- reads stdin)")
    p.add_argument("-H", "--header", action="append", default=[], help="'name: value' (repeatable)")
    p.add_argument("--path", default="", help="HTTP path (default: chat or completions, from the body)")
    p.add_argument("--curl", type=Path, default=None,
                   help="a file holding a curl command line (its URL path, -H and -d are used)")
    p.add_argument("--json", action="store_true", help="print the Decision as JSON instead of tables")
    p.set_defaults(func=run_explain)

    t = sub.add_parser("top", parents=[common], help="live view of the pool as the EPP sees it",
                       description="Per pod queue, KV-cache use, in-flight, decisions/s, hit rate and "
                                   "health, refreshed in place.")
    t.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (1)")
    t.add_argument("--once", action="store_true", help="print one snapshot and exit")
    t.add_argument("--iterations", type=int, default=0,
                   help="stop after this many refreshes (0: until Ctrl-C)")
    t.set_defaults(func=run_top)


# --- input ------------------------------------------------------------------------------------

def read_input(body: str | None, data: str | None, headers: list[str], path: str,
               curl: Path | None) -> ExplainInput:
    out = ExplainInput(path=path)
    if curl is not None:
        try:
            text = curl.read_text()
        except OSError as e:
            raise InputError(f"--curl {curl}: {e.strerror}") from None
        out = parse_curl(text, base=curl.parent)
        if path:
            out.path = path
    if body is not None:
        out.body = body.encode()
    if data is not None:
        out.body = _data(data, Path.cwd())
    for h in headers:
        name, value = _header(h)
        out.headers[name] = value
    if not out.body:
        raise InputError("no request body: give it as an argument, with -d, or with --curl")
    try:
        json.loads(out.body)
    except ValueError as e:
        raise InputError(f"the request body is not JSON: {e}") from None
    return out


def parse_curl(text: str, base: Path) -> ExplainInput:
    """The parts of a curl command line Explain needs: URL path, -H headers, -d body."""
    try:
        words = shlex.split(text.replace("\\\n", " "), comments=True)
    except ValueError as e:
        raise InputError(f"cannot parse the curl command: {e}") from None
    out = ExplainInput()
    it = iter(words[1:] if words and words[0] == "curl" else words)
    for word in it:
        if word in ("-H", "--header"):
            name, value = _header(next(it, ""))
            out.headers[name] = value
        elif word in ("-d", "--data", "--data-raw", "--data-binary", "--json"):
            out.body = _data(next(it, ""), base, raw=word == "--data-raw")
        elif word in ("-X", "--request", "-o", "--output", "-m", "--max-time", "-u", "--user"):
            next(it, None)
        elif word.startswith(("http://", "https://")):
            out.path = urlsplit(word).path or ""
    return out


def _data(value: str, base: Path, raw: bool = False) -> bytes:
    if raw or not value.startswith("@"):
        return value.encode()
    name = value[1:]
    if name == "-":
        return sys.stdin.buffer.read()
    file = Path(name) if Path(name).is_absolute() else base / name
    try:
        return file.read_bytes()
    except OSError as e:
        raise InputError(f"-d @{name}: {e.strerror}") from None


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise InputError(f"header {text!r} is not 'name: value'")
    return name.strip().lower(), value.strip()


def _token(args: argparse.Namespace) -> str:
    if args.token_file is not None:
        try:
            return str(args.token_file.read_text().strip())
        except OSError as e:
            raise InputError(f"--token-file {args.token_file}: {e.strerror}") from None
    return os.environ.get(TOKEN_ENV, "")


def _metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


# --- explain ----------------------------------------------------------------------------------

def run_explain(args: argparse.Namespace) -> int:
    try:
        req = read_input(args.body, args.data, args.header, args.path, args.curl)
        token = _token(args)
    except InputError as e:
        print(f"epp explain: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_explain(args, req, token))


async def _explain(args: argparse.Namespace, req: ExplainInput, token: str) -> int:
    import grpc
    from google.protobuf.json_format import MessageToJson  # type: ignore[import-untyped]

    from epp.admin.proto import pb, pb_grpc
    from epp.admin.render import console, render_decision

    async with grpc.aio.insecure_channel(args.address) as channel:
        stub = pb_grpc.AdminStub(channel)
        try:
            resp = await stub.Explain(pb.ExplainRequest(body=req.body, headers=req.headers, path=req.path),
                                      metadata=_metadata(token), timeout=args.timeout)
        except grpc.aio.AioRpcError as e:
            print(f"epp explain: {args.address}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    decision = resp.decision
    if args.json:
        print(MessageToJson(decision, preserving_proto_field_name=True))
    else:
        console().print(render_decision(decision))
    return 3 if decision.error else 0


# --- top --------------------------------------------------------------------------------------

def run_top(args: argparse.Namespace) -> int:
    try:
        token = _token(args)
    except InputError as e:
        print(f"epp top: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_top(args, token))
    except KeyboardInterrupt:
        return 0


async def _top(args: argparse.Namespace, token: str) -> int:
    import grpc
    from rich.live import Live

    from epp.admin.proto import pb, pb_grpc
    from epp.admin.render import console, render_pool

    out = console()
    live_mode = out.is_terminal and not args.once
    iterations = 1 if args.once else args.iterations
    async with grpc.aio.insecure_channel(args.address) as channel:
        stub = pb_grpc.AdminStub(channel)

        async def snapshot() -> Any:
            return await stub.GetPool(pb.GetPoolRequest(), metadata=_metadata(token), timeout=args.timeout)

        n = 0
        try:
            if not live_mode:
                while True:
                    out.print(render_pool(await snapshot(), args.address))
                    n += 1
                    if iterations and n >= iterations:
                        return 0
                    await asyncio.sleep(args.interval)
            with Live(render_pool(await snapshot(), args.address), console=out, auto_refresh=False,
                      screen=False) as live:
                while not iterations or n < iterations:
                    await asyncio.sleep(args.interval)
                    live.update(render_pool(await snapshot(), args.address), refresh=True)
                    n += 1
        except grpc.aio.AioRpcError as e:
            print(f"epp top: {args.address}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0
