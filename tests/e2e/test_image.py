"""The kexec image (hack/build-image.sh) runs: as uid 65532 on a read-only root filesystem,
with runtime dependencies only and within its size budget.

Uses $KEXEC_IMAGE_ROOTFS when set (hack/test.sh builds the image first and exports it),
else runs hack/build-image.sh (cached: seconds when the tree is unchanged).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from kexec.domain.actions import ACTIONS
from tests.support.image_runner import Image, sandbox_argv

pytestmark = pytest.mark.image

REPO = Path(__file__).resolve().parents[2]
SIZE_BUDGET = 200_000_000  # bytes, uncompressed
UID = 65532


@pytest.fixture(scope="module")
def image() -> Image:
    rootfs = os.environ.get("KEXEC_IMAGE_ROOTFS")
    if not rootfs:
        proc = subprocess.run(["bash", str(REPO / "hack" / "build-image.sh")], cwd=REPO,
                              capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            pytest.fail(f"hack/build-image.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False)
        rootfs = proc.stdout.splitlines()[-1]
    return Image.load(rootfs)


def run(image: Image, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sandbox_argv(image, argv, env=env), capture_output=True, text=True,
                          timeout=120, check=False)


def test_image_runs_as_65532_by_default(image: Image) -> None:
    assert image.ids() == (UID, UID)
    assert image.entrypoint == ["kexec"]
    proc = run(image, image.argv(command=["id"]))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == [f"uid={UID}(kexec)", f"gid={UID}(kexec)"]


def test_actions_lists_the_11_actions(image: Image) -> None:
    proc = run(image, image.argv(args=["actions"]), env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "11 actions" in proc.stdout
    assert len(ACTIONS) == 11
    for name in ACTIONS:
        assert name in proc.stdout


def test_runner_without_its_environment_fails_permanently_with_a_clear_message(image: Image) -> None:
    proc = run(image, image.argv(args=["runner"]))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)  # EXIT_PERMANENT: no retry
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["success"] is False
    assert report["retryable"] is False
    assert report["reason"] == "InvalidRunnerEnvironment"
    assert report["message"] == "missing environment variable KEXEC_ACTION"


def test_root_filesystem_is_read_only_and_tmp_writable(image: Image) -> None:
    proc = run(image, ["/bin/sh", "-c", "touch /tmp/ok && ! touch /opt/kexec/x 2>/dev/null && echo fine"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "fine"


def rootfs_bytes(root: Path) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def test_size_budget(image: Image) -> None:
    size = rootfs_bytes(image.rootfs)
    assert 50_000_000 < size <= SIZE_BUDGET, f"image is {size / 1e6:.1f} MB uncompressed"


def test_runtime_dependencies_only(image: Image) -> None:
    root = image.rootfs
    tools = ["gcc", "cc", "c++", "g++", "clang", "ld", "as", "strip", "make", "pip", "pip3"]
    found = [f"{d}/{t}" for d in ("usr/bin", "usr/local/bin", "opt/kexec/bin") for t in tools
             if (root / d / t).exists()]
    assert found == []
    site = next(root.glob("opt/kexec/lib/python3*/site-packages"))
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert "kexec" in installed
    assert installed.isdisjoint({"pip", "setuptools", "pytest", "hypothesis", "mypy", "ruff",
                                 "import_linter", "cryptography"})
    assert not list(site.rglob("*.pyx")) and not list(site.rglob("*.c"))
