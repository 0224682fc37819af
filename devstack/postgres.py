"""A throw-away PostgreSQL server for tests, benchmarks and local runs.

``PostgresServer`` runs ``initdb`` into a temporary directory and starts ``postgres``
on a free 127.0.0.1 port (plus a unix socket in the same temporary directory), with
durability off for speed (fsync, synchronous_commit, full_page_writes). Running as
root, the server runs as the ``postgres`` system user (created if missing), because
PostgreSQL refuses to run as root. It is killed at exit in any case.

The pytest fixtures built on it are in ``tests/support/postgres.py``.

By hand: ``python -m devstack.postgres`` starts a server and prints its DSN.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from devstack.controlplane import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
ENSURE_SCRIPT = REPO_ROOT / "hack" / "ensure-postgres.sh"
DEFAULT_DB = "kexec_test"
SUPERUSER = "postgres"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be found, installed or started."""


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bin_dir(*, install: bool | None = None) -> Path:
    """The directory holding initdb/pg_ctl/postgres.

    Order: $KEXEC_PG_BINDIR, the newest /usr/lib/postgresql/*/bin, $PATH. When none is
    found and ``install`` (default: running as root and $KEXEC_PG_AUTO_INSTALL != "0"),
    runs hack/ensure-postgres.sh, which installs Debian's package.
    """
    env = os.environ.get("KEXEC_PG_BINDIR")
    candidates: list[Path] = [Path(env)] if env else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    which = shutil.which("initdb")
    if which:
        candidates.append(Path(which).parent)
    for c in candidates:
        if all((c / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return c
    if install is None:
        install = os.geteuid() == 0 and os.environ.get("KEXEC_PG_AUTO_INSTALL", "1") != "0"
    if install and ENSURE_SCRIPT.exists():
        proc = subprocess.run(
            ["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True, timeout=900
        )
        if proc.returncode == 0 and proc.stdout.strip():
            return Path(proc.stdout.strip().splitlines()[-1])
        raise PostgresUnavailable(
            f"hack/ensure-postgres.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; run hack/ensure-postgres.sh"
    )


def _server_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "kexec-pg"):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "kexec-pg"],
        check=True,
        capture_output=True,
    )
    pw = pwd.getpwnam("kexec-pg")
    return pw.pw_uid, pw.pw_gid


class PostgresServer:
    """One private PostgreSQL server: ``start()``/``stop()`` or ``with PostgresServer() as s``.

    ``stop_server()``/``start_server()`` stop and restart the same server (same data
    directory and port) to simulate an outage.
    """

    def __init__(
        self,
        *,
        bin_dir: Path | str | None = None,
        port: int | None = None,
        dbname: str = DEFAULT_DB,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.dbname = dbname
        self.base_dir: Path | None = None
        self._settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "128MB",
            "log_min_messages": "warning",
            "log_min_error_statement": "panic",
            **(settings or {}),
        }
        self._user = _server_user()
        self._atexit_registered = False
        self._running = False

    # ------------------------------------------------------------------ paths

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None, "server not initialised"
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.base_dir is not None, "server not initialised"
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        assert self.base_dir is not None, "server not initialised"
        return self.base_dir / "postgres.log"

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.dbname)

    @property
    def running(self) -> bool:
        return self._running

    def _bin(self, name: str) -> str:
        assert self.bin_dir is not None
        return str(self.bin_dir / name)

    # ------------------------------------------------------------------ processes

    def _run_as_server(
        self, args: list[str], timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        if self._user is not None:
            uid, gid = self._user
            kwargs.update(user=uid, group=gid, extra_groups=[])
            env["HOME"] = str(self.base_dir)
        proc = subprocess.run(
            args,
            cwd=self.base_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )
        if proc.returncode != 0:
            raise PostgresUnavailable(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                f"\n--- server log ---\n{self.log_tail()}"
            )
        return proc

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except (OSError, AssertionError):
            return ""

    def start(self) -> PostgresServer:
        """initdb (once), start the server, create the default database."""
        if self.bin_dir is None:
            self.bin_dir = find_bin_dir()
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="kexec-pg-"))
            self.socket_dir.mkdir()
            self.log_file.touch()
            if self._user is not None:
                uid, gid = self._user
                for p in (self.base_dir, self.socket_dir, self.log_file):
                    os.chown(p, uid, gid)
            os.chmod(self.base_dir, 0o700)
            if not self._atexit_registered:
                atexit.register(self._kill_at_exit)
                self._atexit_registered = True
            self._run_as_server(
                [
                    self._bin("initdb"),
                    "-D", str(self.data_dir),
                    "-U", SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                timeout=120,
            )  # fmt: skip
            conf = self.data_dir / "postgresql.conf"
            lines = [
                f"port = {self.port}",
                f"listen_addresses = '{self.host}'",
                f"unix_socket_directories = '{self.socket_dir}'",
                *(f"{k} = '{v}'" for k, v in self._settings.items()),
            ]
            with conf.open("a") as f:
                f.write("\n# kexec test server\n" + "\n".join(lines) + "\n")
            self.start_server()
            self.create_database(self.dbname)
        elif not self._running:
            self.start_server()
        return self

    def start_server(self, timeout: float = 30) -> None:
        """(Re)start the server process on the same data directory and port."""
        self._run_as_server(
            [
                self._bin("pg_ctl"), "start", "-D", str(self.data_dir),
                "-l", str(self.log_file), "-w", "-t", str(int(timeout)),
            ],
            timeout=timeout + 10,
        )  # fmt: skip
        self._running = True
        self._wait_accepting(timeout)

    def stop_server(self, mode: str = "fast", timeout: float = 30) -> None:
        """Stop the server process (``fast`` closes client connections; ``immediate``
        is a crash). The data directory stays."""
        if self.base_dir is None or not (self.data_dir / "postmaster.pid").exists():
            self._running = False
            return
        self._run_as_server(
            [self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", mode, "-w",
             "-t", str(int(timeout))],
            timeout=timeout + 10,
        )  # fmt: skip
        self._running = False

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(
                        f"postgres not accepting on {self.host}:{self.port}\n{self.log_tail()}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server and delete its data."""
        with contextlib.suppress(Exception):
            self.stop_server(mode="immediate")
        self._kill_postmaster()
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def _kill_postmaster(self) -> None:
        if self.base_dir is None:
            return
        pid_file = self.data_dir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)

    def _kill_at_exit(self) -> None:
        if self.base_dir is not None:
            self.stop()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ client helpers

    def _client_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PGCONNECT_TIMEOUT": "5",
            "PGOPTIONS": "-c client_min_messages=warning",
        }

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL with psql (unaligned, tuples only); returns stdout."""
        proc = subprocess.run(
            [
                self._bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", dbname,
                "-c", sql,
            ],
            capture_output=True, text=True, timeout=60, env=self._client_env(),
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr.strip()}")
        return proc.stdout

    def create_database(self, name: str, template: str = "template0") -> str:
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def dump(self, dbname: str) -> str:
        """The whole database as SQL text (pg_dump, schema and data)."""
        proc = subprocess.run(
            [self._bin("pg_dump"), "-h", self.host, "-p", str(self.port), "-U", SUPERUSER,
             "-d", dbname],
            capture_output=True, text=True, timeout=120, env=self._client_env(),
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"pg_dump failed: {proc.stderr.strip()}")
        return proc.stdout


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop and clean up on kill too
    with PostgresServer() as server:
        print(f"PostgreSQL running: {server.dsn}")
        print(f"  data dir: {server.data_dir}   log: {server.log_file}")
        print(f"  psql -h {server.host} -p {server.port} -U {SUPERUSER} {server.dbname}")
        print("Ctrl-C to stop and delete it.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
