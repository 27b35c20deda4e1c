"""An authenticated kubernetes-asyncio ApiClient: kubeconfig file, in-cluster, or default."""

from __future__ import annotations

import os

from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config


class KubernetesAuthError(RuntimeError):
    pass


async def new_api_client(kubeconfig: str | None = None) -> k8s_client.ApiClient:
    """Explicit kubeconfig > in-cluster service account > $KUBECONFIG / ~/.kube/config."""
    try:
        if kubeconfig:
            return await k8s_config.new_client_from_config(config_file=kubeconfig, persist_config=False)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = k8s_client.Configuration()
            # try_refresh_token: projected service-account tokens rotate (about hourly).
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration, try_refresh_token=True
            )
            return k8s_client.ApiClient(configuration=configuration)
        return await k8s_config.new_client_from_config(
            config_file=os.environ.get("KUBECONFIG") or None, persist_config=False
        )
    except (k8s_config.ConfigException, OSError) as e:
        where = kubeconfig or "in-cluster / $KUBECONFIG / ~/.kube/config"
        raise KubernetesAuthError(f"cannot load Kubernetes credentials from {where}: {e}") from e
