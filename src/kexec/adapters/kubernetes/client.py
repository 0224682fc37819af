"""The one shared ApiClient (a dependency-injector Resource)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration


async def load_configuration(kubeconfig: str | None = None, context: str | None = None,
                             pool_size: int = 64) -> Configuration:
    """kubeconfig (argument, then $KUBECONFIG) or, inside a pod, the in-cluster config."""
    cfg = Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        await config.load_kube_config(config_file=path, context=context,
                                      client_configuration=cfg)
    else:
        # kubernetes_asyncio leaves this one function unannotated
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = pool_size
    return cfg


async def api_client(kubeconfig: str | None = None, context: str | None = None,
                     pool_size: int = 64) -> AsyncIterator[ApiClient]:
    cfg = await load_configuration(kubeconfig, context, pool_size)
    async with ApiClient(cfg) as api:
        yield api
