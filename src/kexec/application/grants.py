"""Zero standing privilege: per-action bindings exist only while an execution needs them.

A per-action ServiceAccount has no permissions at rest. The binding that lets
it act on a target namespace (or on Nodes) is made when an execution starts
validating (the dry run runs as that identity) or enters Preparing, and is
removed when the last execution that needs it leaves those phases. Several
executions may share one binding; the holders are counted in process (only
the leader reconciles) and checked against every execution's phase, so a new
leader never removes a binding that a running execution still needs, and
``collect_garbage`` removes what a crashed leader left behind. A new execution
(no phase yet: it validates as soon as a worker takes it) counts as needing
the binding too, so a burst in one namespace binds once instead of making,
awaiting and removing the binding for every execution.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from kexec.application.ports.cluster import ClusterPort, Identity
from kexec.application.settings import Settings
from kexec.domain.execution import Execution
from kexec.domain.naming import service_account_for
from kexec.domain.phases import Phase
from kexec.domain.safety import target_of

# Phases in which an execution may use its identity's binding.
NEEDS_BINDING = frozenset({Phase.VALIDATING, Phase.PREPARING, Phase.EXECUTING, Phase.VERIFYING})
GrantKey = tuple[str, str, str]  # (execution namespace, action, target namespace or "")


def identity_for(ex_namespace: str, action: str, settings: Settings) -> Identity:
    """The per-action ServiceAccount of an execution's namespace."""
    return Identity(ex_namespace, service_account_for(action))


def grant_key(ex: Execution) -> GrantKey | None:
    target = target_of(ex)
    action = str(ex.spec.get("action", ""))
    if target is None or not action:
        return None
    return (ex.namespace, action, target.namespace)


class Grants:
    def __init__(self, cluster: ClusterPort, settings: Settings) -> None:
        self.cluster = cluster
        self.settings = settings
        self._holders: dict[GrantKey, set[str]] = {}
        self._locks: dict[GrantKey, asyncio.Lock] = {}

    def _lock(self, key: GrantKey) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def acquire(self, ex: Execution, action: str, target_namespace: str) -> Identity:
        """Bind the execution's identity for its target (idempotent) and hold the binding."""
        key = (ex.namespace, action, target_namespace)
        identity = identity_for(ex.namespace, action, self.settings)
        async with self._lock(key):
            holders = self._holders.setdefault(key, set())
            if not holders:  # while someone holds it, the binding is known to exist
                await self.cluster.ensure_identity(identity, action, target_namespace)
            holders.add(ex.uid)
        return identity

    async def release(self, ex: Execution, others: Iterable[Execution]) -> bool:
        """Stop holding; remove the binding when nobody else needs it. True if removed."""
        key = grant_key(ex)
        if key is None:
            return False
        async with self._lock(key):
            holders = self._holders.get(key, set())
            holders.discard(ex.uid)
            if holders or any(_needs(o, key) for o in others if o.uid != ex.uid):
                return False
            self._holders.pop(key, None)
            namespace, action, target_namespace = key
            await self.cluster.revoke_identity(identity_for(namespace, action, self.settings),
                                               action, target_namespace)
            return True

    async def collect_garbage(self, executions: Iterable[Execution]) -> int:
        """Remove every binding no execution needs (after a crash, at leader start)."""
        self._holders.clear()  # a new term: what this process held before is not known now
        needed = {k for ex in executions if ex.phase in NEEDS_BINDING
                  for k in [grant_key(ex)] if k is not None}
        removed = 0
        for identity, action, target_namespace in await self.cluster.identity_grants():
            key = (identity.namespace, action, target_namespace)
            async with self._lock(key):
                if key in needed or self._holders.get(key):
                    continue
                await self.cluster.revoke_identity(identity, action, target_namespace)
                removed += 1
        return removed


def _needs(ex: Execution, key: GrantKey) -> bool:
    return ((ex.phase is None or ex.phase in NEEDS_BINDING) and not ex.deleting
            and grant_key(ex) == key)


class TargetClaims:
    """One execution per target, also between the check and the commit.

    ``holder_of`` judges from the executions' recorded phases, which the controller's
    cache may show a moment late; two validations that interleave could both pass it. The
    claim is taken synchronously right after that check, so the second one waits.
    """

    def __init__(self) -> None:
        self._by_target: dict[str, tuple[str, str]] = {}  # target key → (uid, execution key)

    def claim(self, target: str, ex: Execution) -> str:
        """"" when ``ex`` now holds ``target``; else the key of the execution holding it."""
        holder = self._by_target.get(target)
        if holder is not None and holder[0] != ex.uid:
            return holder[1]
        self._by_target[target] = (ex.uid, ex.key)
        return ""

    def release(self, ex: Execution) -> None:
        for target, (uid, _) in list(self._by_target.items()):
            if uid == ex.uid:
                del self._by_target[target]
