"""Run a container of an image as a process inside its root filesystem, under ``bwrap``.

No container engine works in this sandbox (DESIGN.md §5: ``podman run`` fails), but
``bwrap`` does. :func:`sandbox_argv` builds the command line that starts one container the
way a kubelet would as far as the process can tell: the image's root filesystem read-only
at ``/``, a fresh ``/proc`` and ``/dev``, a writable ``/tmp`` (an emptyDir), its own PID
namespace, the image's environment overlaid by the container's, Kubernetes' rules for
``command``/``args`` against the image's ENTRYPOINT/CMD, extra read-only bind mounts
(e.g. the ServiceAccount token directory) and a numeric uid/gid (default: the image's
USER). The host network is shared, so ``127.0.0.1`` reaches the local apiserver.

Standard library only, so it can move with the node simulator. The image is what
``hack/build-image.sh`` prints last: the root filesystem, with the image configuration
(``config.json``: Env, Entrypoint, Cmd, User, WorkingDir) next to it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True)
class Image:
    rootfs: Path
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str = ""
    workdir: str = "/"

    @classmethod
    def load(cls, rootfs: str | Path) -> Image:
        """The image unpacked at ``rootfs``; its configuration is ``rootfs/../config.json``."""
        root = Path(rootfs)
        if not (root / "usr").is_dir():
            raise FileNotFoundError(f"{root} is not an unpacked root filesystem")
        cfg = json.loads((root.parent / "config.json").read_text(encoding="utf-8"))
        env = dict(item.split("=", 1) for item in cfg.get("Env") or [])
        return cls(rootfs=root, env=env, entrypoint=list(cfg.get("Entrypoint") or []),
                   cmd=list(cfg.get("Cmd") or []), user=cfg.get("User") or "",
                   workdir=cfg.get("WorkingDir") or "/")

    def ids(self) -> tuple[int, int]:
        """The image's numeric USER as (uid, gid); 0 when unset or by name."""
        uid, _, gid = self.user.partition(":")
        return (int(uid) if uid.isdigit() else 0, int(gid) if gid.isdigit() else 0)

    def argv(self, command: Sequence[str] | None = None, args: Sequence[str] | None = None) -> list[str]:
        """Kubernetes' rule: ``command`` replaces ENTRYPOINT (and drops CMD), ``args`` replaces CMD."""
        if command:
            return [*command, *(args or [])]
        return [*self.entrypoint, *(self.cmd if args is None else args)]


def sandbox_argv(image: Image, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 ro_binds: Sequence[tuple[str | Path, str]] = (),
                 binds: Sequence[tuple[str | Path, str]] = (),
                 uid: int | None = None, gid: int | None = None, workdir: str | None = None) -> list[str]:
    """The ``bwrap`` command line that runs ``argv`` in a container of ``image``.

    ``ro_binds``/``binds``: (host path, path in the container), read-only/writable. The
    process runs as ``uid``:``gid`` (default: the image's USER). As root, bwrap needs no
    user namespace and the image's ``setpriv`` (util-linux, Essential in Debian) drops to the
    uid; otherwise an unprivileged user namespace maps the caller to it.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise FileNotFoundError("bwrap not found: install bubblewrap (hack/build-image.sh does)")
    image_uid, image_gid = image.ids()
    uid = image_uid if uid is None else uid
    gid = image_gid if gid is None else gid
    cmd = [bwrap, "--ro-bind", str(image.rootfs), "/", "--proc", "/proc", "--dev", "/dev",
           "--perms", "1777", "--tmpfs", "/tmp", "--unshare-pid", "--unshare-ipc", "--die-with-parent",
           "--chdir", workdir or image.workdir, "--clearenv"]
    for key, value in {**image.env, **(env or {})}.items():
        cmd += ["--setenv", key, value]
    if any(inside.startswith(("/run/", "/var/run/")) for _, inside in [*ro_binds, *binds]):
        # The root is read-only: mount points under /run need a tmpfs there (as runtimes have).
        cmd += ["--perms", "0755", "--tmpfs", "/run"]
    for host, inside in ro_binds:
        cmd += ["--ro-bind", str(host), inside]
    for host, inside in binds:
        cmd += ["--bind", str(host), inside]
    if os.geteuid() == 0:
        cmd += ["--", "/usr/bin/setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    else:
        cmd += ["--unshare-user", "--uid", str(uid), "--gid", str(gid), "--"]
    return [*cmd, *argv]
