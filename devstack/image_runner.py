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
from typing import Any

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True)
class Image:
    rootfs: Path
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str = ""
    workdir: str = "/"
    scratch: bool = False  # a root filesystem made here (binary_image): mount points may be created in it

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

    @classmethod
    def binary(cls, binary: str | Path, root: str | Path, *, entrypoint: str = "/opa") -> Image:
        """A ``FROM scratch`` image holding one static binary at ``entrypoint``: what the
        simulator runs for ``openpolicyagent/opa:*-static`` containers (the opa built by
        hack/build-binaries.sh stands in for the image's own, same major version)."""
        root = Path(root)
        for d in ("usr", "proc", "dev", "tmp", "etc", "run", "var"):
            (root / d).mkdir(parents=True, exist_ok=True)
        if not (root / "var" / "run").is_symlink():
            (root / "var" / "run").symlink_to("../run")  # as in Debian: the token goes on the /run tmpfs
        target = root / entrypoint.lstrip("/")
        if not target.exists():
            shutil.copy2(binary, target)
        return cls(rootfs=root, entrypoint=[entrypoint], user="1000:1000", workdir="/", scratch=True)

    def ids(self) -> tuple[int, int]:
        """The image's numeric USER as (uid, gid); 0 when unset or by name."""
        uid, _, gid = self.user.partition(":")
        return (int(uid) if uid.isdigit() else 0, int(gid) if gid.isdigit() else 0)

    def argv(self, command: Sequence[str] | None = None, args: Sequence[str] | None = None) -> list[str]:
        """Kubernetes' rule: ``command`` replaces ENTRYPOINT (and drops CMD), ``args`` replaces CMD."""
        if command:
            return [*command, *(args or [])]
        return [*self.entrypoint, *(self.cmd if args is None else args)]


def resolve_inside(rootfs: Path, path: str) -> str:
    """``path`` with the root filesystem's symlinks resolved inside it (``/var/run`` -> ``/run``
    in Debian): bwrap creates mount points without following them."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    for _ in range(40):  # symlink hops
        if not parts:
            break
        part = parts.pop(0)
        candidate = rootfs.joinpath(*done, part)
        if candidate.is_symlink():
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        if part == "..":
            done = done[:-1]
        elif part != ".":
            done.append(part)
    return "/" + "/".join(done + parts)


def sandbox_argv(image: Image, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 ro_binds: Sequence[tuple[str | Path, str]] = (),
                 binds: Sequence[tuple[str | Path, str]] = (),
                 uid: int | None = None, gid: int | None = None, workdir: str | None = None) -> list[str]:
    """The ``bwrap`` command line that runs ``argv`` in a container of ``image``.

    ``ro_binds``/``binds``: (host path, path in the container), read-only/writable. The
    process runs as ``uid``:``gid`` (default: the image's USER). As root, bwrap needs no
    user namespace and the image's ``setpriv`` (util-linux, Essential in Debian) drops to the
    uid; otherwise (or in an image without setpriv) a user namespace maps the caller to it.
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
    if any(resolve_inside(image.rootfs, inside).startswith("/run/") for _, inside in [*ro_binds, *binds]):
        # The root is read-only: mount points under /run need a tmpfs there (as runtimes have).
        cmd += ["--perms", "0755", "--tmpfs", "/run"]
    for flag, mounts in (("--ro-bind", ro_binds), ("--bind", binds)):
        for host, inside in mounts:
            dest = resolve_inside(image.rootfs, inside)
            # Missing parents (on the /run tmpfs): 0755, not bwrap's default 0700.
            parents = [str(p) for p in reversed(Path(dest).parents) if str(p) != "/"
                       and not (image.rootfs / str(p).lstrip("/")).is_dir()]
            for parent in parents:
                cmd += ["--perms", "0755", "--dir", parent]
            cmd += [flag, str(host), dest]
    if os.geteuid() == 0 and (image.rootfs / "usr/bin/setpriv").exists():
        cmd += ["--", "/usr/bin/setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    else:
        cmd += ["--unshare-user", "--uid", str(uid), "--gid", str(gid), "--"]
    return [*cmd, *argv]


# --- pods: what the node simulator needs to run a container of a known image --------------

def repository(reference: str) -> str:
    """The image's name without registry, path, tag or digest: ``reg:5000/x/kexec:1`` -> ``kexec``."""
    name = reference.split("@", 1)[0].rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def images_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, Path]:
    """``{"kexec": rootfs}`` when ``$KEXEC_IMAGE_ROOTFS`` is set (hack/test.sh exports it), else ``{}``."""
    rootfs = environ.get("KEXEC_IMAGE_ROOTFS")
    return {"kexec": Path(rootfs)} if rootfs else {}


def write_service_account(directory: Path, token: str | None, ca_pem: bytes, namespace: str) -> Path:
    """The files Kubernetes projects at :data:`SERVICE_ACCOUNT_DIR` (world-readable, as its 0644 default)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    files = {"ca.crt": ca_pem, "namespace": namespace.encode()}
    if token is not None:
        files["token"] = token.encode()
    for name, data in files.items():
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o644)
    return directory


def run_as(pod: Mapping[str, Any], container: Mapping[str, Any], image: Image) -> tuple[int, int]:
    """uid/gid the kubelet would use: container securityContext, then the pod's, then the image's USER.

    Raises PermissionError for ``runAsNonRoot`` with uid 0, as the kubelet refuses to start it.
    """
    pod_sc = pod.get("spec", {}).get("securityContext") or {}
    sc = {**pod_sc, **(container.get("securityContext") or {})}
    image_uid, image_gid = image.ids()
    uid = int(sc.get("runAsUser", image_uid))
    gid = int(sc.get("runAsGroup", image_gid))
    if sc.get("runAsNonRoot") and uid == 0:
        raise PermissionError("container has runAsNonRoot and image will run as root")
    return uid, gid


def pod_sandbox_argv(image: Image, pod: Mapping[str, Any], container: Mapping[str, Any], argv: Sequence[str],
                     *, env: Mapping[str, str], service_account_dir: Path | None,
                     termination_log: Path, volumes: Mapping[str, Path] | None = None) -> list[str]:
    """:func:`sandbox_argv` for one container of a pod: its uid/gid, ``workingDir``, env, the
    ServiceAccount files at :data:`SERVICE_ACCOUNT_DIR`, the termination log at the
    container's ``terminationMessagePath`` (writable by the container's uid) and its
    ``volumeMounts`` of ``volumes`` (volume name -> host directory; a missing one is not
    mounted). The root filesystem is always read-only (as ``readOnlyRootFilesystem: true``),
    so a mount point must exist in the image (or be under /tmp or /run)."""
    uid, gid = run_as(pod, container, image)
    termination_log.touch()
    if os.geteuid() == 0:
        os.chown(termination_log, uid, gid)
    else:
        termination_log.chmod(0o666)
    ro: list[tuple[str | Path, str]] = []
    rw: list[tuple[str | Path, str]] = [
        (termination_log, container.get("terminationMessagePath") or "/dev/termination-log")]
    if service_account_dir is not None:
        ro.append((service_account_dir, SERVICE_ACCOUNT_DIR))
    for mount in container.get("volumeMounts") or []:
        host = (volumes or {}).get(mount["name"])
        if host is None:
            continue
        inside = resolve_inside(image.rootfs, mount["mountPath"])
        if not (image.rootfs / inside.lstrip("/")).exists() and not inside.startswith(("/tmp/", "/run/")):
            if not image.scratch:
                raise ValueError(f"mount point {mount['mountPath']} does not exist in the image")
            (image.rootfs / inside.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (ro if mount.get("readOnly") else rw).append((host, mount["mountPath"]))
    return sandbox_argv(image, argv, env=env, ro_binds=ro, binds=rw,
                        uid=uid, gid=gid, workdir=container.get("workingDir") or None)
