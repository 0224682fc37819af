"""The session fixture ``kexec``: the controller running on the local control plane."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from devstack.controlplane import ControlPlane
from devstack.harness import Kexec
from devstack.postgres import PostgresServer
from devstack.simulator import NodeSimulator


@pytest.fixture(scope="session")
def kexec(
    control_plane: ControlPlane, node_simulator: NodeSimulator, postgres_server: PostgresServer
) -> Iterator[Kexec]:
    dsn = postgres_server.create_database(f"kexec_e2e_{uuid.uuid4().hex[:6]}")
    env = Kexec(control_plane, dsn)
    env.install()
    env.start_controller("e2e-1", "--no-leader-elect", http_port=0)
    try:
        yield env
    finally:
        env.stop()
