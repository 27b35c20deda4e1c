"""`epp sidecar`: the P/D routing sidecar in front of a decode engine."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal

from epp.k8s.cli import KubernetesOptions
from epp.k8s.resources import GROUP_V1, GROUP_X
from epp.sidecar.connectors import CONNECTORS
from epp.sidecar.server import SidecarConfig, serve


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "sidecar",
        help="P/D routing sidecar (llm-d protocol) in front of a decode engine",
        description="Proxy in front of a decode engine: requests carrying x-prefiller-host-port are "
        "prefilled remotely first (llm-d routing-sidecar protocol), all others pass through.",
    )
    p.add_argument("--port", type=int, default=8100, help="listen port (default 8100)")
    p.add_argument("--host", default="127.0.0.1",
                   help="listen address (default 127.0.0.1; use 0.0.0.0 in a pod)")
    p.add_argument("--decoder-url", default="http://127.0.0.1:8200",
                   help="the local decode engine (default http://127.0.0.1:8200)")
    p.add_argument("--connector", default="nixlv2", choices=sorted(CONNECTORS),
                   help="P/D protocol of the engines (default nixlv2, vLLM NixlConnector)")
    p.add_argument("--prefill-timeout", type=float, default=60.0,
                   help="seconds allowed for the whole prefill leg (default 60)")
    p.add_argument("--connect-timeout", type=float, default=5.0, help="upstream connect timeout (s)")
    p.add_argument("--on-prefill-error", choices=("fallback", "fail"), default="fallback",
                   help="fallback: decode with local prefill (default); fail: return the error (llm-d)")
    g = p.add_argument_group(
        "prefill targets (SSRF guard)",
        "The prefill header may only name a member of the InferencePool (learned from the same "
        "source as `epp serve`) or an entry of --allowed-prefill-targets; anything else gets 403.")
    g.add_argument("--allowed-prefill-targets", "--allowed-prefill-hosts", default="",
                   dest="allowed_prefill_targets",
                   help="comma-separated host:port (or host, any port) allowed besides pool members")
    g.add_argument("--pool-file", default=None, help="local pool source: InferencePool manifest")
    g.add_argument("--endpoints-file", default=None, help="local pool source: the pods (as `epp serve`)")
    g.add_argument("--pool-name", default="", help="Kubernetes pool source: the InferencePool to watch")
    g.add_argument("--pool-namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                   help="namespace of the InferencePool (default: $POD_NAMESPACE or 'default')")
    g.add_argument("--pool-group", default=GROUP_V1, choices=(GROUP_V1, GROUP_X),
                   help="API group of the InferencePool")
    g.add_argument("--kubeconfig", default=None,
                   help="kubeconfig file (default: in-cluster service account, else ~/.kube/config)")
    p.add_argument("--prefiller-use-tls", action="store_true", help="talk https to prefillers")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> SidecarConfig:
    targets = frozenset(h.strip() for h in args.allowed_prefill_targets.split(",") if h.strip())
    k8s = None
    if args.pool_name:
        k8s = KubernetesOptions(pool_name=args.pool_name, pool_namespace=args.pool_namespace,
                                pool_group=args.pool_group, kubeconfig=args.kubeconfig)
    return SidecarConfig(
        decoder_url=args.decoder_url,
        connector=args.connector,
        host=args.host,
        port=args.port,
        prefill_timeout=args.prefill_timeout,
        connect_timeout=args.connect_timeout,
        on_prefill_error=args.on_prefill_error,
        allowed_prefill_targets=targets,
        pool_file=args.pool_file,
        endpoints_file=args.endpoints_file,
        kubernetes=k8s,
        prefiller_scheme="https" if args.prefiller_use_tls else "http",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
        config.validate()
    except ValueError as e:
        logging.getLogger("epp.sidecar").error("invalid configuration: %s", e)
        return 2
    asyncio.run(_main(config))
    return 0


async def _main(config: SidecarConfig) -> None:
    task = asyncio.create_task(serve(config))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
