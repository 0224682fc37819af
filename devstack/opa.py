"""Locate the ``opa`` binary (built by hack/build-binaries.sh) and run an OPA server.

with OpaServer(["policies"]) as opa:
    httpx.post(f"{opa.url}/v1/data/kexec/allow", json={"input": {...}})
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from devstack.controlplane import (
    BinariesUnavailable,
    ManagedProcess,
    free_port,
    get_bin_dir,
    register_cleanup,
    unregister_cleanup,
)


def find_opa(bin_dir: str | Path | None = None) -> Path:
    """Path of the opa binary: ``bin_dir``/opa, else $KEXEC_BIN_DIR/opa (building if needed)."""
    d = Path(bin_dir) if bin_dir else get_bin_dir()
    opa = d / "opa"
    if not opa.is_file():
        raise BinariesUnavailable(f"opa not found in {d}")
    return opa


def opa_version(opa: str | Path | None = None) -> str:
    out = subprocess.run([str(opa or find_opa()), "version"], check=True, capture_output=True, text=True)
    return out.stdout


class OpaServer:
    """``opa run --server`` on a free 127.0.0.1 port, loading ``policy_paths``.

    Attributes: ``url`` (http://127.0.0.1:PORT), ``port``, ``log_path``.
    """

    def __init__(
        self,
        policy_paths: Iterable[str | Path] = (),
        bin_dir: str | Path | None = None,
        log_dir: str | Path | None = None,
        extra_args: Iterable[str] = (),
        watch: bool = False,
    ) -> None:
        self.policy_paths = [Path(p) for p in policy_paths]
        self.bin_dir = bin_dir
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="kexec-opa-"))
        self.extra_args = list(extra_args)
        self.watch = watch
        self.port: int | None = None
        self.url: str | None = None
        self.log_path: Path | None = None
        self._proc: ManagedProcess | None = None

    def __enter__(self) -> OpaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 20.0) -> OpaServer:
        if self._proc is not None:
            return self
        opa = find_opa(self.bin_dir)
        for p in self.policy_paths:
            if not p.exists():
                raise FileNotFoundError(p)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.log_dir / f"opa-{self.port}.log"
        argv = [str(opa), "run", "--server", f"--addr=127.0.0.1:{self.port}", "--log-level=info", "--disable-telemetry"]
        if self.watch:
            argv.append("--watch")
        argv += self.extra_args + [str(p) for p in self.policy_paths]
        self._proc = ManagedProcess("opa", argv, self.log_path)
        register_cleanup(id(self), self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._proc.alive():
                tail = self._proc.tail()
                self.stop()
                raise RuntimeError(f"opa exited early (log {self.log_path}):\n{tail}")
            with contextlib.suppress(urllib.error.URLError, OSError):
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        print(f"[kexec-opa] {self.url} (log {self.log_path})", file=sys.stderr, flush=True)
                        return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"opa did not become healthy in {timeout}s (log {self.log_path})")

    def query(self, path: str, input: object) -> object:
        """POST /v1/data/<path> with ``{"input": input}``; returns the ``result`` (or None)."""
        assert self.url
        req = urllib.request.Request(
            f"{self.url}/v1/data/{path.strip('/')}",
            data=json.dumps({"input": input}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read()).get("result")

    def stop(self) -> None:
        unregister_cleanup(id(self))
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
