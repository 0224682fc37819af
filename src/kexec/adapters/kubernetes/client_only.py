"""Load only the part of kubernetes-asyncio that kexec uses.

kexec talks to the API in raw JSON through ``ApiClient.call_api`` (never the generated
API classes or models), and loads configuration through ``kubernetes_asyncio.config``.
The package's ``__init__`` modules import every generated API and model (≈ 850 modules,
≈ 33 MB and 0.1 s of the controller's start): ``install`` puts the two packages in
``sys.modules`` without running their ``__init__``, so that importing ``ApiClient``,
``Configuration``, ``ApiException`` and ``config`` loads just those modules (and aiohttp).

For a process that imports nothing else of kubernetes-asyncio (the controller); call it
before anything imports kubernetes-asyncio. A later ``from kubernetes_asyncio.client
import V1Pod`` in the same process would fail.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def install() -> bool:
    """True when installed now; False when kubernetes-asyncio was imported already."""
    if "kubernetes_asyncio" in sys.modules:
        return False
    spec = importlib.util.find_spec("kubernetes_asyncio")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = next(iter(spec.submodule_search_locations))
    package = _package("kubernetes_asyncio", root)
    client = _package("kubernetes_asyncio.client", f"{root}/client")
    package.client = client  # type: ignore[attr-defined]
    # api_client.py does `import kubernetes_asyncio.client.models` for deserializing into
    # generated models, which kexec never asks for (it asks for "object": plain JSON).
    models = types.ModuleType("kubernetes_asyncio.client.models")
    sys.modules[models.__name__] = models
    client.models = models  # type: ignore[attr-defined]
    from kubernetes_asyncio.client import exceptions, rest
    from kubernetes_asyncio.client.api_client import ApiClient
    from kubernetes_asyncio.client.configuration import Configuration

    client.ApiClient = ApiClient  # type: ignore[attr-defined]
    client.Configuration = Configuration  # type: ignore[attr-defined]
    client.ApiException = exceptions.ApiException  # type: ignore[attr-defined]
    client.exceptions = exceptions  # type: ignore[attr-defined]
    client.rest = rest  # type: ignore[attr-defined]
    import kubernetes_asyncio.config as config

    package.config = config  # type: ignore[attr-defined]
    return True


def _package(name: str, path: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [path]
    module.__package__ = name
    sys.modules[name] = module
    return module
