"""A real, local Kubernetes control plane for tests and local runs.

``ControlPlane`` starts, from the binaries built by ``hack/build-binaries.sh``:

* etcd (temp data dir, free ports, no fsync),
* kube-apiserver on a free 127.0.0.1 port: own CA and serving cert, RBAC (+Node)
  authorization, client-cert admin credential (O=system:masters), service-account
  signing key pair, PodSecurity + ServiceAccount admission,
* kube-controller-manager with every controller (``*``), per-controller service
  account credentials, no leader election.

There are no kubelets and no scheduler: see :mod:`devstack.simulator`.

Run by hand (builds binaries if needed, starts control plane + node simulator,
waits for Ctrl-C)::

    python -m devstack.controlplane [--nodes 3] [--no-simulator]

or ``hack/local-cluster.sh``.

Environment:

* ``KEXEC_BIN_DIR``   -- directory with the binaries (else hack/build-binaries.sh runs)
* ``KEXEC_STATE_DIR`` -- where run dirs go (default /tmp/kexec-cluster); each run gets
  ``<state>/run-<time>-<pid>/`` with ``logs/``, ``pki/``, ``admin.kubeconfig``;
  ``<state>/latest`` points at the newest run.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime as _dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-binaries.sh"
REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "opa")
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.0.0.0/24"
KEEP_RUNS = 5


def _log(msg: str) -> None:
    print(f"[kexec-controlplane] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- binaries


class BinariesUnavailable(RuntimeError):
    pass


def _check_bin_dir(d: Path, names: Iterable[str] = REQUIRED_BINARIES) -> Path:
    missing = [n for n in names if not os.access(d / n, os.X_OK)]
    if missing:
        raise BinariesUnavailable(f"{d} lacks executable(s): {', '.join(missing)}")
    return d


_bin_dir_lock = threading.Lock()
_bin_dir_cache: Path | None = None


def get_bin_dir(build: bool = True) -> Path:
    """Directory holding etcd/kube-apiserver/kube-controller-manager/kubectl/opa.

    ``$KEXEC_BIN_DIR`` if set (must be complete), else the output of
    ``hack/build-binaries.sh`` (a no-op when already built). Raises
    :class:`BinariesUnavailable` with the build log tail on failure.
    """
    global _bin_dir_cache
    with _bin_dir_lock:
        if _bin_dir_cache is not None:
            return _bin_dir_cache
        env_dir = os.environ.get("KEXEC_BIN_DIR")
        if env_dir:
            _bin_dir_cache = _check_bin_dir(Path(env_dir))
            return _bin_dir_cache
        if not build:
            raise BinariesUnavailable("KEXEC_BIN_DIR is not set")
        if not BUILD_SCRIPT.exists():
            raise BinariesUnavailable(f"{BUILD_SCRIPT} not found")
        _log(f"KEXEC_BIN_DIR not set: running {BUILD_SCRIPT} (first run may take 15-30 min)")
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            stdout=subprocess.PIPE,
            stderr=None,  # build log streams to our stderr
            text=True,
            cwd=REPO_ROOT,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        if proc.returncode != 0 or not lines:
            raise BinariesUnavailable(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}; see its stderr above")
        _bin_dir_cache = _check_bin_dir(Path(lines[-1].strip()))
        os.environ["KEXEC_BIN_DIR"] = str(_bin_dir_cache)  # children/other helpers reuse it
        return _bin_dir_cache


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_prctl: Any = None
try:  # loaded in the parent so the forked child only makes one libc call (no locks)
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except Exception:  # pragma: no cover - non-glibc platforms
    pass


def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Kill the child when the thread that started it dies (e.g. pytest SIGKILLed)."""
    if _prctl is not None:
        _prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
    no_proxy = ",".join(x for x in (env.get("NO_PROXY", ""), "127.0.0.1,localhost") if x)
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    if extra:
        env.update(extra)
    return env


class ManagedProcess:
    """A child in its own process group, output to a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab", buffering=0)
        self._log.write(f"# {' '.join(argv)}\n".encode())
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env if env is not None else child_env(),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_pdeathsig if threading.current_thread() is threading.main_thread() else None,
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            _killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _killpg(self.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(5)
        else:
            _killpg(self.pid, signal.SIGKILL)  # stray grandchildren, if any
        with contextlib.suppress(Exception):
            self._log.close()


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombies count as dead
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _pid_belongs_to(pid: int, run_dir: Path) -> bool:
    """True if the process's cmdline or cwd refers to ``run_dir`` (guards pid reuse)."""
    marker = str(run_dir)
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if marker in cmd:
            return True
    except OSError:
        return False
    with contextlib.suppress(OSError):
        if os.readlink(f"/proc/{pid}/cwd").startswith(marker):
            return True
    return False


# ------------------------------------------------------------------ cleanup on exit

_cleanups: dict[int, Callable[[], None]] = {}
_cleanup_lock = threading.Lock()
_handlers_installed = False


def register_cleanup(key: int, fn: Callable[[], None]) -> None:
    """Run ``fn`` at interpreter exit or on SIGTERM/SIGHUP unless unregistered first."""
    global _handlers_installed
    with _cleanup_lock:
        _cleanups[key] = fn
        if _handlers_installed:
            return
        _handlers_installed = True
    atexit.register(run_cleanups)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            prev = signal.getsignal(sig)
            if prev in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)


def unregister_cleanup(key: int) -> None:
    with _cleanup_lock:
        _cleanups.pop(key, None)


def run_cleanups() -> None:
    with _cleanup_lock:
        fns = list(_cleanups.values())[::-1]
        _cleanups.clear()
    for fn in fns:
        with contextlib.suppress(Exception):
            fn()


def _on_signal(signum: int, _frame: Any) -> None:
    run_cleanups()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


# --------------------------------------------------------------------------- PKI


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _pem_key(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = []
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


class _PKI:
    def __init__(self, pki_dir: Path) -> None:
        self.dir = pki_dir
        pki_dir.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("kexec-test-ca"))
            .issuer_name(_name("kexec-test-ca"))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_file = self._write("ca.crt", _pem_cert(self.ca_cert))
        self.ca_key_file = self._write("ca.key", _pem_key(self.ca_key))

    def _write(self, name: str, data: bytes) -> Path:
        p = self.dir / name
        p.write_bytes(data)
        p.chmod(0o600)
        return p

    def issue(
        self,
        name: str,
        cn: str,
        org: str | None = None,
        server: bool = False,
        client: bool = False,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        eku = []
        if server:
            eku.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            eku.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, org))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                critical=False,
            )
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = b.sign(self.ca_key, hashes.SHA256())
        return self._write(f"{name}.crt", _pem_cert(cert)), self._write(f"{name}.key", _pem_key(key))

    def service_account_keys(self) -> tuple[Path, Path]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        priv = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        return self._write("sa.pub", pub), self._write("sa.key", priv)


def _b64(p: Path) -> str:
    return base64.b64encode(p.read_bytes()).decode()


def write_kubeconfig(
    path: Path,
    server: str,
    ca_file: Path,
    user: str,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> Path:
    """Write a self-contained kubeconfig (certs embedded)."""
    u: dict[str, Any] = {}
    if cert_file and key_file:
        u["client-certificate-data"] = _b64(cert_file)
        u["client-key-data"] = _b64(key_file)
    if token:
        u["token"] = token
    ctx: dict[str, Any] = {"cluster": "kexec-local", "user": user}
    if namespace:
        ctx["namespace"] = namespace
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "kexec-local", "cluster": {"server": server, "certificate-authority-data": _b64(ca_file)}}
        ],
        "users": [{"name": user, "user": u}],
        "contexts": [{"name": "kexec-local", "context": ctx}],
        "current-context": "kexec-local",
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- ControlPlane


def _state_root(state_dir: str | Path | None) -> Path:
    return Path(state_dir or os.environ.get("KEXEC_STATE_DIR") or "/tmp/kexec-cluster")


def cleanup_stale_runs(state_root: Path, keep: int = KEEP_RUNS) -> None:
    """Kill processes of earlier runs whose owner died; prune old run dirs."""
    if not state_root.is_dir():
        return
    runs = sorted((d for d in state_root.glob("run-*") if d.is_dir()), key=lambda d: d.stat().st_mtime)
    live_owner: set[Path] = set()
    for run in runs:
        pids: list[int] = []
        owner = None
        pidfile = run / "pids.json"
        if pidfile.exists():
            with contextlib.suppress(Exception):
                data = json.loads(pidfile.read_text())
                owner = int(data.get("owner", 0)) or None
                pids = [int(p) for p in data.get("pids", [])]
        simpids = run / "sim" / "pids"
        if simpids.exists():
            with contextlib.suppress(Exception):
                pids += [int(x) for x in simpids.read_text().split() if x.strip()]
        if owner and owner != os.getpid() and _pid_alive(owner):
            live_owner.add(run)
            continue
        for pid in pids:
            if _pid_alive(pid) and _pid_belongs_to(pid, run):
                _log(f"killing stale process {pid} from {run}")
                _killpg(pid, signal.SIGKILL)
        # etcd data is useless after the run; logs are kept
        shutil.rmtree(run / "etcd-data", ignore_errors=True)
        with contextlib.suppress(OSError):
            pidfile.unlink()
    old = [r for r in runs if r not in live_owner]
    for run in old[: max(0, len(old) - keep)]:
        shutil.rmtree(run, ignore_errors=True)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1.

    Attributes after :meth:`start`: ``kubeconfig`` (admin, Path), ``server`` (URL),
    ``ca_file``, ``admin_cert_file``, ``admin_key_file``, ``log_dir``, ``run_dir``,
    ``bin_dir``, ``service_account_issuer``.
    """

    def __init__(
        self,
        bin_dir: str | Path | None = None,
        state_dir: str | Path | None = None,
        verbosity: int = 1,
        extra_apiserver_args: Iterable[str] = (),
        extra_controller_manager_args: Iterable[str] = (),
    ) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self.state_root = _state_root(state_dir)
        self.verbosity = verbosity
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_controller_manager_args = list(extra_controller_manager_args)
        self.run_dir: Path | None = None
        self.log_dir: Path | None = None
        self.kubeconfig: Path | None = None
        self.server: str | None = None
        self.ca_file: Path | None = None
        self.admin_cert_file: Path | None = None
        self.admin_key_file: Path | None = None
        self.service_account_issuer = SA_ISSUER
        self.startup_seconds: float | None = None
        self._procs: list[ManagedProcess] = []
        self._ssl: ssl.SSLContext | None = None
        self._stopped = True

    # -- context manager
    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- API helpers (sync, admin credential)
    def api(
        self, method: str, path: str, body: Any = None, timeout: float = 10.0, content_type: str = "application/json"
    ) -> Any:
        """Tiny admin REST call; returns decoded JSON; raises urllib.error.HTTPError."""
        assert self.server and self._ssl
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, context=self._ssl, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw and raw[:1] in (b"{", b"[") else raw.decode()

    def kubectl(self, *args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        assert self.bin_dir and self.kubeconfig
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            check=check,
            text=True,
            capture_output=True,
            **kw,
        )

    # -- lifecycle
    def start(self, timeout: float = 90.0) -> ControlPlane:
        if not self._stopped:
            return self
        t0 = time.monotonic()
        bin_dir = self.bin_dir or get_bin_dir()
        self.bin_dir = _check_bin_dir(bin_dir, ("etcd", "kube-apiserver", "kube-controller-manager"))
        self.state_root.mkdir(parents=True, exist_ok=True)
        cleanup_stale_runs(self.state_root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = self.state_root / f"run-{stamp}-{os.getpid()}-{id(self) & 0xFFFF:04x}"
        self.log_dir = self.run_dir / "logs"
        self.log_dir.mkdir(parents=True)
        latest = self.state_root / "latest"
        with contextlib.suppress(OSError):
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(self.run_dir.name)
        self._stopped = False
        register_cleanup(id(self), self.stop)
        _log(f"run dir {self.run_dir} (logs: {self.log_dir})")
        try:
            self._start(t0, timeout)
        except BaseException:
            tails = "\n".join(f"--- {p.name} ({p.log_path}) ---\n{p.tail()}" for p in self._procs)
            self.stop()
            if tails:
                _log("component log tails:\n" + tails)
            raise
        self.startup_seconds = time.monotonic() - t0
        _log(
            f"control plane ready in {self.startup_seconds:.1f}s: server={self.server} "
            f"kubeconfig={self.kubeconfig} logs={self.log_dir}"
        )
        return self

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        assert self.log_dir and self.run_dir
        p = ManagedProcess(name, argv, self.log_dir / f"{name}.log", cwd=self.run_dir)
        self._procs.append(p)
        (self.run_dir / "pids.json").write_text(
            json.dumps({"owner": os.getpid(), "pids": [q.pid for q in self._procs]})
        )
        return p

    def _wait(self, what: str, check: Callable[[], bool], deadline: float, procs: Iterable[ManagedProcess]) -> None:
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            for p in procs:
                if not p.alive():
                    raise RuntimeError(
                        f"{p.name} exited with code {p.popen.returncode} while waiting for {what}; "
                        f"log {p.log_path}:\n{p.tail()}"
                    )
            try:
                if check():
                    return
            except Exception as e:
                last_err = e
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what} (last error: {last_err!r}); logs in {self.log_dir}")

    def _start(self, t0: float, timeout: float) -> None:
        assert self.run_dir and self.bin_dir
        deadline = t0 + timeout
        b = self.bin_dir
        pki = _PKI(self.run_dir / "pki")
        self.ca_file = pki.ca_file
        svc_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
        serving = pki.issue(
            "apiserver",
            "kube-apiserver",
            server=True,
            dns=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            ips=["127.0.0.1", svc_ip],
        )
        self.admin_cert_file, self.admin_key_file = pki.issue("admin", "kexec-admin", org="system:masters", client=True)
        kcm_cert = pki.issue("kube-controller-manager", "system:kube-controller-manager", client=True)
        proxy_cert = pki.issue("front-proxy-client", "front-proxy-client", client=True)
        sa_pub, sa_key = pki.service_account_keys()

        etcd_port, etcd_peer, api_port, kcm_port = (free_port() for _ in range(4))
        self.server = f"https://127.0.0.1:{api_port}"
        self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        self._ssl.load_cert_chain(str(self.admin_cert_file), str(self.admin_key_file))

        self.kubeconfig = write_kubeconfig(
            self.run_dir / "admin.kubeconfig",
            self.server,
            self.ca_file,
            "kexec-admin",
            self.admin_cert_file,
            self.admin_key_file,
        )
        kcm_kubeconfig = write_kubeconfig(
            self.run_dir / "kube-controller-manager.kubeconfig",
            self.server,
            self.ca_file,
            "system:kube-controller-manager",
            *kcm_cert,
        )

        # ---- etcd
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        etcd = self._spawn(
            "etcd",
            [
                str(b / "etcd"),
                "--name=default",
                f"--data-dir={self.run_dir / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
        )

        def etcd_ok() -> bool:
            with urllib.request.urlopen(etcd_url + "/health", timeout=2) as r:
                return bool(json.loads(r.read()).get("health") == "true")

        self._wait("etcd /health", etcd_ok, deadline, [etcd])

        # ---- kube-apiserver
        api = self._spawn(
            "kube-apiserver",
            [
                str(b / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={serving[0]}",
                f"--tls-private-key-file={serving[1]}",
                f"--client-ca-file={self.ca_file}",
                f"--requestheader-client-ca-file={self.ca_file}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={proxy_cert[0]}",
                f"--proxy-client-key-file={proxy_cert[1]}",
                "--authorization-mode=Node,RBAC",
                "--anonymous-auth=false",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--api-audiences={SA_ISSUER}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,"
                "Priority,DefaultTolerationSeconds,ResourceQuota,NodeRestriction",
                # nodes are registered by the simulator already Ready; with this plugin
                # new nodes start tainted not-ready until the node lifecycle controller's
                # next pass.
                "--disable-admission-plugins=TaintNodesByCondition",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                f"--cert-dir={self.run_dir / 'pki'}",
                f"--v={self.verbosity}",
                *self.extra_apiserver_args,
            ],
        )
        self._wait(
            "kube-apiserver /readyz", lambda: self.api("GET", "/readyz", timeout=3) == "ok", deadline, [etcd, api]
        )

        # ---- kube-controller-manager
        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(b / "kube-controller-manager"),
                f"--kubeconfig={kcm_kubeconfig}",
                f"--authentication-kubeconfig={kcm_kubeconfig}",
                f"--authorization-kubeconfig={kcm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                "--leader-elect=false",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={self.ca_file}",
                f"--cluster-signing-cert-file={pki.ca_file}",
                f"--cluster-signing-key-file={pki.ca_key_file}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--controller-start-interval=0s",
                f"--cert-dir={self.run_dir / 'pki' / 'kcm'}",
                f"--v={self.verbosity}",
                *self.extra_controller_manager_args,
            ],
        )

        def default_sa() -> bool:
            try:
                self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default", timeout=3)
                return True
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return False
                raise

        self._wait("ServiceAccount default/default", default_sa, deadline, [etcd, api, kcm])

    def restart(self, name: str = "kube-apiserver", down_seconds: float = 0.0, timeout: float = 60.0) -> float:
        """Stop one component (``etcd``, ``kube-apiserver``, ``kube-controller-manager``),
        wait ``down_seconds``, start it again with the same arguments (same port, same data)
        and wait until the API server is ready again. Returns the seconds it was unready."""
        index = next(i for i, p in enumerate(self._procs) if p.name == name)
        old = self._procs[index]
        t0 = time.monotonic()
        old.stop()
        time.sleep(down_seconds)
        assert self.log_dir and self.run_dir
        self._procs[index] = ManagedProcess(name, old.argv, self.log_dir / f"{name}.log", cwd=self.run_dir)
        (self.run_dir / "pids.json").write_text(
            json.dumps({"owner": os.getpid(), "pids": [q.pid for q in self._procs]})
        )

        def ready() -> bool:
            return bool(self.api("GET", "/readyz", timeout=3) == "ok")

        self._wait(f"kube-apiserver /readyz after restarting {name}", ready, time.monotonic() + timeout, self._procs)
        return time.monotonic() - t0

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        unregister_cleanup(id(self))
        for p in reversed(self._procs):  # kcm, apiserver, etcd
            p.stop()
        self._procs.clear()
        if self.run_dir:
            shutil.rmtree(self.run_dir / "etcd-data", ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.run_dir / "pids.json").unlink()
            _log(f"control plane stopped; logs kept in {self.log_dir}")


# --------------------------------------------------------------------------- __main__


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Run a local kexec test cluster until Ctrl-C")
    ap.add_argument("--nodes", type=int, default=3, help="simulated nodes (default 3)")
    ap.add_argument("--no-simulator", action="store_true", help="control plane only")
    ap.add_argument("--state-dir", default=None)
    args = ap.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: stop.set())

    cp = ControlPlane(state_dir=args.state_dir)
    sim = None
    try:
        cp.start()
        assert cp.run_dir and cp.kubeconfig
        if not args.no_simulator:
            from devstack.simulator import NodeSimulator

            sim = NodeSimulator(cp.kubeconfig, nodes=args.nodes, log_dir=cp.log_dir).start()
        (cp.state_root / "kubeconfig").unlink(missing_ok=True)
        (cp.state_root / "kubeconfig").symlink_to(cp.kubeconfig)
        print(
            f"""
kexec local cluster is up ({cp.startup_seconds:.1f}s).
  server:     {cp.server}
  kubeconfig: {cp.kubeconfig}   (also {cp.state_root / "kubeconfig"})
  logs:       {cp.log_dir}
  kubectl:    {cp.bin_dir}/kubectl

  export KUBECONFIG={cp.kubeconfig}
  export PATH={cp.bin_dir}:$PATH

Press Ctrl-C to stop.""",
            flush=True,
        )
        while not stop.wait(1.0):
            if any(not p.alive() for p in cp._procs):
                dead = [p.name for p in cp._procs if not p.alive()]
                _log(f"component(s) died: {dead}; see {cp.log_dir}")
                return 1
        return 0
    finally:
        if sim:
            sim.stop()
        cp.stop()


if __name__ == "__main__":
    sys.exit(main())
