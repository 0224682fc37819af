"""The controller loads only the part of kubernetes-asyncio it uses (raw JSON calls)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import asyncio, json, sys
from kexec.adapters.kubernetes.client_only import install
assert install()
import kexec.entrypoints.controller  # everything the controller imports
from kexec.adapters.kubernetes.client import api_client

async def main():
    async for api in api_client(sys.argv[1]):
        return api.configuration.host, api.rest_client.pool_manager.trust_env

host, trust_env = asyncio.run(main())
loaded = [m for m in sys.modules if m.startswith("kubernetes_asyncio")]
print(json.dumps({"host": host, "trust_env": trust_env, "loaded": loaded}))
"""


def test_the_controller_imports_no_generated_api_or_model(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443",
                                               "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    out = subprocess.run([sys.executable, "-c", PROBE, str(kubeconfig)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    got = json.loads(out.splitlines()[-1])
    assert got["host"] == "https://127.0.0.1:6443"
    assert got["trust_env"] is False  # no proxy / netrc lookup per request
    assert not [m for m in got["loaded"] if ".models." in m or ".api." in m], got["loaded"]
    assert len(got["loaded"]) < 40, got["loaded"]  # (≈ 850 with the package's __init__)
