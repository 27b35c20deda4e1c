"""`epp run-local` (what `make run` calls): the whole local stack in the foreground."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from epp.localstack.envoy_config import BODY_MODES
from epp.localstack.stack import DEFAULT_MODEL, REPO, LocalStack, StackConfig, StackError


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run-local", help="start Envoy + the EPP + simulated vLLM pods on loopback",
        description="Start the local stack: simulated vLLM pods, the EPP and Envoy, on 127.0.0.1.")
    p.add_argument("--pods", type=int, default=3, help="simulated vLLM pods (3)")
    p.add_argument("--pd", action="store_true",
                   help="disaggregated prefill/decode: 1 prefill + 2 decode pods with routing sidecars")
    p.add_argument("--engine", default="sim", choices=("sim", "vllm"),
                   help="sim (default) or real vLLM (needs vllm installed and a GPU)")
    p.add_argument("--vllm-model", default="", help="with --engine vllm: model path to serve")
    p.add_argument("--model", default=DEFAULT_MODEL, help="served model name")
    p.add_argument("--config", type=Path, default=None, help="EndpointPickerConfig (default: embedded)")
    p.add_argument("--failure-mode", default="FailClose", choices=("FailOpen", "FailClose"))
    p.add_argument("--listen-port", type=int, default=8081, help="Envoy listener (8081)")
    p.add_argument("--run-dir", type=Path, default=None, help="where logs and generated files go (.run)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="the model's tokenizer directory: the sims tokenize with it (make run passes the "
                        "Llama-3.1 fixture when present)")
    p.add_argument("--precise", action="store_true",
                   help="with --tokenizer: the EPP routes with the precise prefix scorer (KV events + "
                        "the same tokenizer) instead of the default config's approximate one")
    p.add_argument("--time-scale", type=float, default=1.0, help="simulator speed factor (1.0 = real time)")
    p.add_argument("--epp-tls", action="store_true",
                   help="TLS between Envoy and the EPP (as in Kubernetes), with a generated certificate")
    p.add_argument("--tenants", action="store_true",
                   help="API keys for two example tenants (deploy/local/tenants.yaml) and flow control")
    p.add_argument("--request-body-mode", default=None, choices=BODY_MODES,
                   help="Envoy ext_proc request body mode: STREAMED (default: one round trip), "
                        "BUFFERED (two round trips; default with --response-cache) or "
                        "FULL_DUPLEX_STREAMED (GIE's)")
    p.add_argument("--epp-replicas", type=int, default=1, help="active-active EPP replicas behind Envoy (1)")
    p.add_argument("--models", type=int, default=1, choices=(1, 2),
                   help="2: two pools behind one gateway, vLLM pods serving one model and SGLang pods "
                        "serving another, each with its own EPP, routed by the body's model "
                        "(docs/multi-model.md); --pods is then per pool")
    p.add_argument("--rollouts", action="store_true",
                   help="a 90/10 canary of model `llama` (deploy/local/rollouts.yaml) with the SLO guard "
                        "and session affinity (docs/rollouts.md)")
    p.add_argument("--response-cache", type=Path, default=None, metavar="RULES",
                   help="the EPP's exact-response cache with these rules (e.g. deploy/local/response-cache.yaml; "
                        "docs/response-cache.md), Envoy set up for it")
    p.add_argument("--free-ports", action="store_true",
                   help="pick free loopback ports for everything instead of the documented ones")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.models == 2:
        return run_models(args)
    cfg = StackConfig(pods=args.pods, pd=args.pd, engine=args.engine, vllm_model=args.vllm_model,
                      model=args.model, epp_config=args.config, failure_mode=args.failure_mode,
                      listen_port=args.listen_port, time_scale=args.time_scale,
                      epp_tls=args.epp_tls, tokenizer=args.tokenizer, precise=args.precise,
                      request_body_mode=args.request_body_mode,
                      epp_replicas=args.epp_replicas, supervise=True, ports_free=args.free_ports)
    if args.free_ports and args.listen_port != 8081:
        cfg.listen_port = args.listen_port
    if args.run_dir is not None:
        cfg.run_dir = args.run_dir
    if args.tenants:
        _with_tenants(cfg)
    if args.rollouts:
        _with_rollouts(cfg)
    if args.response_cache is not None:
        if args.request_body_mode not in (None, "BUFFERED"):
            print("error: --response-cache needs --request-body-mode BUFFERED (Envoy ignores per-request "
                  f"mode overrides with {args.request_body_mode})", file=sys.stderr)
            return 2
        cfg.response_cache = True
        cfg.epp_args = [*cfg.epp_args, "--response-cache", str(args.response_cache)]
    stack = LocalStack(cfg)
    print(f">> starting {len(stack.pods)} {cfg.engine} pod(s), the EPP and Envoy (logs in {cfg.run_dir / 'logs'})",
          flush=True)
    try:
        stack.start()
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        stack.stop()
        return 130
    url = stack.url
    pods = ", ".join(f"{p.name} ({p.role}) :{p.serving_port}" for p in stack.pods)
    print(f"""
The local stack is up.
  API (Envoy):   {url}/v1/chat/completions   and   {url}/v1/completions
  EPP:           ext_proc 127.0.0.1:{cfg.grpc_port}, readiness http://127.0.0.1:{cfg.health_port}/readyz,
                 metrics http://127.0.0.1:{cfg.metrics_port}/metrics
  Envoy admin:   http://127.0.0.1:{cfg.admin_port}
  Pods:          {pods}

Try it:
  curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{{"model": "{cfg.model}", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 16}}'
  curl -s {url}/v1/completions -H 'content-type: application/json' \\
    -d '{{"model": "{cfg.model}", "prompt": "Once upon a time", "max_tokens": 16, "stream": true}}'

The response header x-sim-pod names the pod that served it. Ctrl-C stops everything.
""", flush=True)
    if args.tenants:
        print(_tenant_curls(url, cfg.model), flush=True)
    if args.rollouts:
        print(_rollout_help(url, cfg), flush=True)
    return _serve_until_stopped(stack)


TENANT_KEYS = REPO / "deploy/local/tenants.yaml"
TENANT_EXAMPLE_KEYS = (("team-a", "sk-local-team-a"), ("team-b", "sk-local-team-b"))


def _with_tenants(cfg: StackConfig) -> None:
    """API keys + flow control (docs/flow-control.md): the EPP holds requests while the pool
    is saturated, so Envoy's ext_proc message timeout must outlast the longest queue TTL."""
    cfg.epp_args = [*cfg.epp_args, "--api-keys", str(TENANT_KEYS)]
    if cfg.epp_config is None:
        cfg.epp_config = REPO / "deploy/local/epp-config-flowcontrol.yaml"
    cfg.envoy_message_timeout_ms = max(cfg.envoy_message_timeout_ms, 60_000)


def _with_rollouts(cfg: StackConfig) -> None:
    """The canary example of docs/rollouts.md. The objectives and the InferenceModelRewrite go
    into one file in the run directory (the EPP re-reads it on change: edit the weights there);
    Envoy sends response headers to the EPP for the SLO guard and the session token."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    combined = cfg.run_dir / "objectives-rollouts.yaml"
    parts = [p.read_text() for p in (cfg.objectives, REPO / "deploy/local/rollouts.yaml") if p is not None]
    combined.write_text("\n---\n".join(parts))
    cfg.objectives = combined
    if cfg.epp_config is None:
        cfg.epp_config = REPO / "deploy/local/epp-config-rollouts.yaml"
    cfg.response_header_mode = "SEND"


def _rollout_help(url: str, cfg: StackConfig) -> str:
    return f"""Rollouts (docs/rollouts.md): model `llama` goes 90/10 to {cfg.model} and `tweet-summary`,
sticky on x-user-id; edit the weights in {cfg.objectives} (re-read on save).
  curl -s {url}/v1/completions -H 'x-user-id: alice' -H 'content-type: application/json' \\
    -d '{{"model": "llama", "prompt": "Hello", "max_tokens": 8}}'
  curl -s http://127.0.0.1:{cfg.metrics_port}/metrics | grep -E 'epp_rollout|model_rewrite'
Session affinity: send back the x-session-token response header, or name a session in x-session-id.
"""


def _tenant_curls(url: str, model: str) -> str:
    lines = ["Tenants (API keys in deploy/local/tenants.yaml; without a valid key: 401):"]
    for tenant, key in TENANT_EXAMPLE_KEYS:
        lines.append(f"  # {tenant}\n  curl -s {url}/v1/completions -H 'authorization: Bearer {key}' "
                     f"-H 'content-type: application/json' \\\n"
                     f"    -d '{{\"model\": \"{model}\", \"prompt\": \"Hello\", \"max_tokens\": 16}}'")
    return "\n".join(lines) + "\n"


def run_models(args: argparse.Namespace) -> int:
    """`make run MODELS=2`: two pools (vLLM model A, SGLang model B) behind one gateway."""
    from epp.localstack.multipool import MultiPoolStack, MultiStackConfig, default_pools

    if args.pd or args.engine != "sim" or args.tenants or args.epp_replicas != 1 or args.config is not None:
        print("error: --models 2 runs simulated pods only, without --pd, --tenants, --config or EPP replicas",
              file=sys.stderr)
        return 2
    pools = default_pools(args.pods, args.tokenizer)
    cfg = MultiStackConfig(pools=pools, failure_mode=args.failure_mode, listen_port=args.listen_port,
                           time_scale=args.time_scale, supervise=True, ports_free=args.free_ports)
    if args.free_ports:
        for plan in pools:
            plan.base_pod_port = 0
        if args.listen_port != 8081:
            cfg.listen_port = args.listen_port
    if args.run_dir is not None:
        cfg.run_dir = args.run_dir
    stack = MultiPoolStack(cfg)
    print(f">> starting {len(pools)} pools, their EPPs, the body-based router and Envoy "
          f"(logs in {cfg.run_dir}/logs and {cfg.run_dir}/pool-*/logs)", flush=True)
    try:
        stack.start()
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        stack.stop()
        return 130
    url = stack.url
    lines = []
    for plan in pools:
        pool = stack.pools[plan.name]
        pods = ", ".join(f"{p.name} :{p.serving_port}" for p in pool.pods)
        lines.append(f"  pool {plan.name} ({plan.engine}): {', '.join(plan.served)}\n"
                     f"      EPP ext_proc :{pool.cfg.grpc_port}, metrics http://127.0.0.1:{pool.cfg.metrics_port}"
                     f"/metrics; pods {pods}")
    pool_lines = "\n".join(lines)
    print(f"""
The multi-model gateway is up.
  API (Envoy):   {url}/v1/chat/completions, {url}/v1/completions, {url}/v1/models (all pools)
  Body-based router: ext_proc :{cfg.bbr_grpc_port}, readiness http://127.0.0.1:{cfg.bbr_health_port}/readyz
{pool_lines}

Try it:
  curl -s {url}/v1/models
  curl -s {url}/v1/completions -H 'content-type: application/json' \\
    -d '{{"model": "{pools[0].model}", "prompt": "Hello", "max_tokens": 16}}'
  curl -s {url}/v1/completions -H 'content-type: application/json' \\
    -d '{{"model": "{pools[1].model}", "prompt": "Hello", "max_tokens": 16}}'

The response header x-sim-pod names the pod that served it. Ctrl-C stops everything.
""", flush=True)
    return _serve_until_stopped(stack)


class _Stoppable(Protocol):
    def stop(self) -> None: ...


def _serve_until_stopped(stack: _Stoppable) -> int:
    """Keep a started stack running until Ctrl-C or SIGTERM, then stop all of it.

    A crashed pod, sidecar, EPP or Envoy is restarted by the stack's supervisor (with backoff,
    logged on stderr), as a cluster would; the stack keeps serving meanwhile.
    """
    stopping = False

    def _on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _on_signal)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        while not stopping:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    print(">> stopping", flush=True)
    stack.stop()
    return 0
