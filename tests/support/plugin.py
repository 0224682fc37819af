"""pytest plugin: real local Kubernetes control plane, node simulator, opa.

Register with ``pytest_plugins = ["tests.support.plugin"]`` (tests/conftest.py) or
``-p tests.support.plugin``. The servers themselves are in :mod:`devstack`. Session-scoped fixtures:

* ``bin_dir``        -- Path with etcd/kube-apiserver/kube-controller-manager/kubectl/opa
                        ($KEXEC_BIN_DIR, else built by hack/build-binaries.sh)
* ``control_plane``  -- started :class:`devstack.controlplane.ControlPlane`
                        (``.kubeconfig``, ``.server``, ``.ca_file``, ``.log_dir``, ``.api()``, ``.kubectl()``)
* ``node_simulator`` -- started :class:`devstack.simulator.NodeSimulator` bound to it
                        (Job pods of the kexec image run from $KEXEC_IMAGE_ROOTFS when set)
* ``opa_bin``        -- Path of the opa binary
* ``kexec_image_rootfs`` -- Path of the kexec image's root filesystem ($KEXEC_IMAGE_ROOTFS,
                        else built by hack/build-image.sh: cached by the sources)

If binaries cannot be obtained or the cluster cannot start, the fixtures FAIL (never skip).
:func:`required_opa` does the same for a test that needs only the opa binary.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.controlplane import BinariesUnavailable, ControlPlane, get_bin_dir
from devstack.image_runner import images_from_env
from devstack.simulator import NodeSimulator


def required_opa() -> Path:
    """$KEXEC_BIN_DIR/opa for a test that needs it, failing the test (never skipping, never
    building) when the binary is not there."""
    bin_dir = os.environ.get("KEXEC_BIN_DIR")
    if not bin_dir:
        pytest.fail("KEXEC_BIN_DIR is not set: run hack/build-binaries.sh and export its output")
    opa = Path(bin_dir) / "opa"
    if not os.access(opa, os.X_OK):
        pytest.fail(f"{opa} is missing or not executable")
    return opa


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    try:
        return get_bin_dir()
    except Exception as e:
        pytest.fail(f"cannot obtain control-plane binaries: {e}", pytrace=False)


@pytest.fixture(scope="session")
def opa_bin(bin_dir: Path) -> Path:
    p = bin_dir / "opa"
    if not p.is_file():
        pytest.fail(f"opa binary missing in {bin_dir}", pytrace=False)
    return p


@pytest.fixture(scope="session")
def kexec_image_rootfs() -> Path:
    rootfs = os.environ.get("KEXEC_IMAGE_ROOTFS")
    if not rootfs:
        repo = Path(__file__).resolve().parents[2]
        proc = subprocess.run(["bash", str(repo / "hack" / "build-image.sh")], cwd=repo,
                              capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            pytest.fail(f"hack/build-image.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False)
        rootfs = proc.stdout.splitlines()[-1]
    return Path(rootfs)


@pytest.fixture(scope="session")
def control_plane(bin_dir: Path) -> Iterator[ControlPlane]:
    cp = ControlPlane(bin_dir=bin_dir)
    try:
        cp.start()
    except (BinariesUnavailable, RuntimeError, TimeoutError, OSError) as e:
        pytest.fail(f"local control plane failed to start: {e}\n(logs: {cp.log_dir})", pytrace=False)
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def node_simulator(control_plane: ControlPlane) -> Iterator[NodeSimulator]:
    assert control_plane.kubeconfig is not None
    sim = NodeSimulator(control_plane.kubeconfig, log_dir=control_plane.log_dir, images=images_from_env())
    try:
        sim.start()
    except Exception as e:
        pytest.fail(f"node simulator failed to start: {e}\n(logs: {control_plane.log_dir})", pytrace=False)
    try:
        yield sim
    finally:
        sim.stop()
