"""The one shared ApiClient (a dependency-injector Resource)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from aiohttp.helpers import get_env_proxy_for_url
from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration
from yarl import URL


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
    if not cfg.proxy:
        # $HTTPS_PROXY / $NO_PROXY, read once here (see ``without_env_lookups``)
        with contextlib.suppress(LookupError):
            proxy, auth = get_env_proxy_for_url(URL(str(cfg.host)))
            cfg.proxy = str(proxy.with_user(None))
            if auth is not None:
                cfg.proxy_headers = {"Proxy-Authorization": auth.encode()}
    return cfg


def without_env_lookups(api: ApiClient) -> ApiClient:
    """kubernetes-asyncio's session trusts the environment, so aiohttp looks up a proxy and
    parses ~/.netrc on a worker thread for every request (≈ 1/3 of the controller's CPU per
    request in a burst). The proxy is read once (``load_configuration``) and the API server
    is never authenticated by netrc: the lookups are turned off."""
    session = api.rest_client.pool_manager
    session._trust_env = False  # no public setter; ``trust_env`` reads it
    assert not session.trust_env
    return api


async def api_client(kubeconfig: str | None = None, context: str | None = None,
                     pool_size: int = 64) -> AsyncIterator[ApiClient]:
    cfg = await load_configuration(kubeconfig, context, pool_size)
    async with ApiClient(cfg) as api:
        yield without_env_lookups(api)
