"""Command-line flags of Kubernetes mode, added to `epp serve` by the server.

    from epp.k8s.cli import add_k8s_arguments, KubernetesOptions
    add_k8s_arguments(serve_parser)
    ...
    options = KubernetesOptions.from_args(args)   # None when --pool-name is not given

Flag names follow GIE's EPP (--pool-name, --pool-namespace, --pool-group) where one exists.
Defaults for the namespace and identity come from the downward API env vars
(POD_NAMESPACE, POD_NAME) that deploy/gateway-api/epp-deployment.yaml sets.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass

from epp.k8s.resources import GROUP_V1, GROUP_X


@dataclass(frozen=True, slots=True)
class KubernetesOptions:
    pool_name: str
    pool_namespace: str = "default"
    pool_group: str = GROUP_V1
    kubeconfig: str | None = None  # None: in-cluster, else ~/.kube/config
    watch_inference_models: bool = False  # legacy InferenceModel CRD
    leader_elect: bool = False
    lease_name: str = ""  # "" -> "<pool>-epp-leader"
    lease_namespace: str = ""  # "" -> pool namespace
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    identity: str = ""  # "" -> POD_NAME or hostname
    watch_timeout_s: int = 300
    config_watch_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.pool_name:
            raise ValueError("--pool-name is required in Kubernetes mode")
        if self.pool_group not in (GROUP_V1, GROUP_X):
            raise ValueError(f"--pool-group must be {GROUP_V1} or {GROUP_X}, got {self.pool_group!r}")

    @property
    def effective_lease_name(self) -> str:
        return self.lease_name or f"{self.pool_name}-epp-leader"

    @property
    def effective_lease_namespace(self) -> str:
        return self.lease_namespace or self.pool_namespace

    @property
    def effective_identity(self) -> str:
        return self.identity or os.environ.get("POD_NAME") or socket.gethostname()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> KubernetesOptions | None:
        if not getattr(args, "pool_name", None):
            return None
        return cls(
            pool_name=args.pool_name,
            pool_namespace=args.pool_namespace,
            pool_group=args.pool_group,
            kubeconfig=args.kubeconfig,
            watch_inference_models=args.watch_inference_models,
            leader_elect=args.leader_elect,
            lease_name=args.lease_name,
            lease_namespace=args.lease_namespace,
            lease_duration_s=args.lease_duration,
            renew_deadline_s=args.renew_deadline,
            retry_period_s=args.retry_period,
            identity=args.identity,
            watch_timeout_s=args.watch_timeout,
            config_watch_interval_s=args.config_watch_interval,
        )


def add_k8s_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Kubernetes mode (enabled by --pool-name)")
    g.add_argument("--pool-name", default="", help="InferencePool to serve; enables Kubernetes mode")
    g.add_argument("--pool-namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                   help="namespace of the InferencePool (default: $POD_NAMESPACE or 'default')")
    g.add_argument("--pool-group", default=GROUP_V1, choices=(GROUP_V1, GROUP_X),
                   help=f"API group of the InferencePool: {GROUP_V1} (v1) or {GROUP_X} (v1alpha2)")
    g.add_argument("--kubeconfig", default=None,
                   help="kubeconfig file (default: in-cluster service account, else ~/.kube/config)")
    g.add_argument("--watch-inference-models", action="store_true",
                   help="also watch the legacy InferenceModel CRD (criticality)")
    g.add_argument("--leader-elect", action="store_true",
                   help="elect a leader on a coordination.k8s.io Lease for once-per-pool work")
    g.add_argument("--lease-name", default="", help="Lease name (default: <pool>-epp-leader)")
    g.add_argument("--lease-namespace", default="", help="Lease namespace (default: pool namespace)")
    g.add_argument("--lease-duration", type=float, default=15.0, help="seconds (default 15)")
    g.add_argument("--renew-deadline", type=float, default=10.0, help="seconds (default 10)")
    g.add_argument("--retry-period", type=float, default=2.0, help="seconds (default 2)")
    g.add_argument("--identity", default="", help="leader election identity (default: $POD_NAME)")
    g.add_argument("--watch-timeout", type=int, default=300,
                   help="server-side watch timeout in seconds, jittered up to 2x (default 300)")
    g.add_argument("--config-watch-interval", type=float, default=1.0,
                   help="poll interval in seconds for the mounted EndpointPickerConfig (default 1)")
