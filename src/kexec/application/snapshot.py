from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kexec.application.ports.cluster import Identity, RunnerCluster
from kexec.domain.resources import Read, Snapshot


async def read_snapshot(
    cluster: RunnerCluster, reads: Iterable[Read], identity: Identity | None = None
) -> Snapshot:
    """Carry out an action's reads; a Get of an absent object yields None."""
    snap: Snapshot = {}
    for read in reads:
        snap[read.name] = await cluster.read(read, identity)
    return snap


def snapshot_objects(snap: Snapshot) -> list[Any]:
    """Every object in a snapshot, lists flattened."""
    out: list[Any] = []
    for value in snap.values():
        out.extend(value if isinstance(value, list) else [value])
    return out
