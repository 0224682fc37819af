"""Concurrency limits that queue, never fail (DESIGN.md "limits, storms and partial failure").

An execution takes a slot of every limit that applies to it (its namespace, its action,
and for actions that take a node out of service the node limits) when it leaves
Validating, and gives them back when it ends. While a limit is full, the execution
waits in ``Pending`` / ``Queued`` with a message naming the limit and its position;
it starts in creation order when a slot frees (the step that frees it calls
``on_free``, which the controller wires to requeue the executions waiting behind).

The slots are an in-process table: only the leader reconciles, and one reconcile step
checks and takes them without awaiting in between, so a limit is never exceeded, not
even for a moment, however many workers run. A new leader rebuilds the table from the
executions' phases (``rebuild``) before it admits anything.

The limit values are knobs of the policy data (``policies/data.json``):
``kexec.config.max_concurrent_per_namespace`` and the ``kexec.limits`` document
(``LimitSettings.from_data``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kexec.domain.actions import ACTIONS
from kexec.domain.execution import Execution
from kexec.domain.phases import Phase

# Phases in which an execution holds its slots.
HOLDS_SLOT = frozenset({Phase.WAITING_APPROVAL, Phase.PREPARING, Phase.EXECUTING,
                        Phase.VERIFYING})
QUEUED = "Queued"
STORM_BRAKE = "StormBrake"  # waits for the storm brake of its action (application/brake.py)
COOLDOWN = "Cooldown"  # its target was remediated by the same action a moment ago
DEFERRED = "Deferred"  # the policy deferred it (a maintenance window)
# Waiting for something other than a slot: not counted as ahead in a queue.
NOT_NEXT = frozenset({"TargetBusy", "Paused", STORM_BRAKE, COOLDOWN, DEFERRED})


@dataclass(frozen=True)
class LimitSettings:
    """The limit knobs (defaults chosen for production, documented in policies/README.md)."""

    per_namespace: int = 5
    per_action: Mapping[str, int] = field(default_factory=dict)
    # Executions that take a node out of service (cordon, drain) at once.
    nodes_at_once: int = 1
    # At most this fraction of the schedulable nodes may be taken out by kexec at once
    # (at least one node, so a small cluster can still be remediated).
    node_loss_fraction: float = 0.34
    # Safety net: a queued execution looks again after this long even without an event.
    recheck_seconds: float = 30.0
    # The storm brake (application/brake.py), per action; 0 turns a rule off. A knob the
    # data document does not state is off.
    storm_executions: int = 0  # at most this many start per window; the next ones wait
    storm_failures: int = 0  # this many failures (of a Job, or postconditions) in the window
    storm_window_seconds: float = 600.0
    # {"drain_node": {"executions_per_window": 3, "failures_to_trip": 1}}
    storm_per_action: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    # How often the head of a brake's queue looks for an operator's release.
    storm_recheck_seconds: float = 10.0
    # A target Completed by an action waits this long before that action acts on it again.
    cooldown_seconds: float = 0.0
    cooldown_per_action: Mapping[str, float] = field(default_factory=dict)
    # A deferred execution (policy: a maintenance window) asks the policy again this often.
    deferred_recheck_seconds: float = 60.0

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> LimitSettings:
        kexec = data.get("kexec") if isinstance(data.get("kexec"), Mapping) else {}
        assert isinstance(kexec, Mapping)
        config = kexec.get("config") if isinstance(kexec.get("config"), Mapping) else {}
        limits = kexec.get("limits") if isinstance(kexec.get("limits"), Mapping) else {}
        assert isinstance(config, Mapping) and isinstance(limits, Mapping)
        base = cls()
        per_ns = config.get("max_concurrent_per_namespace", base.per_namespace)
        per_action = limits.get("max_concurrent_per_action") or {}
        storm = _section(limits, "storm_brake")
        cooldown = _section(limits, "cooldown")
        return cls(
            per_namespace=int(per_ns),
            per_action={str(k): int(v) for k, v in dict(per_action).items()},
            nodes_at_once=int(limits.get("max_nodes_out_of_service_at_once",
                                         base.nodes_at_once)),
            node_loss_fraction=float(limits.get("max_node_loss_fraction",
                                                base.node_loss_fraction)),
            recheck_seconds=float(limits.get("queued_recheck_seconds", base.recheck_seconds)),
            storm_executions=int(storm.get("executions_per_window", 0)),
            storm_failures=int(storm.get("failures_to_trip", 0)),
            storm_window_seconds=float(storm.get("window_seconds", base.storm_window_seconds)),
            storm_per_action={str(k): {str(n): int(v) for n, v in dict(o).items()}
                              for k, o in dict(storm.get("per_action") or {}).items()},
            storm_recheck_seconds=float(storm.get("recheck_seconds",
                                                  base.storm_recheck_seconds)),
            cooldown_seconds=float(cooldown.get("default_seconds", 0)),
            cooldown_per_action={str(k): float(v)
                                 for k, v in dict(cooldown.get("per_action") or {}).items()},
            deferred_recheck_seconds=float(limits.get("deferred_recheck_seconds",
                                                      base.deferred_recheck_seconds)),
        )

    def storm_limits(self, action: str) -> tuple[int, int]:
        """(executions per window, failures that trip) for ``action``; 0 = off."""
        own = self.storm_per_action.get(action) or {}
        return (int(own.get("executions_per_window", self.storm_executions)),
                int(own.get("failures_to_trip", self.storm_failures)))

    def cooldown(self, action: str) -> float:
        return float(self.cooldown_per_action.get(action, self.cooldown_seconds))


def _section(limits: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    found = limits.get(name)
    return found if isinstance(found, Mapping) else {}


@dataclass(frozen=True)
class Limit:
    key: str  # what the slots are counted by, e.g. "namespace/team-a"
    maximum: int
    describe: str  # for the message, e.g. "namespace team-a"


def takes_node(action: str) -> bool:
    found = ACTIONS.get(action)
    return bool(found is not None and found.removes_capacity)


def _order(ex: Execution) -> tuple[Any, str, str]:
    return (ex.created, ex.name, ex.uid)


_WAITING = frozenset({None, Phase.PENDING, Phase.VALIDATING})  # none of them terminal


def _waiting(ex: Execution) -> bool:
    return ex.status.phase in _WAITING and not ex.deleting


class Limits:
    def __init__(self, settings: LimitSettings,
                 source: Callable[[], Mapping[str, Any]] | None = None) -> None:
        """``source``, when given, returns the live policy data document: the knobs follow
        a hot-reloaded policy (the ``safety-policies`` ConfigMap)."""
        self._base = settings
        self._source = source
        self._parsed: tuple[Mapping[str, Any] | None, LimitSettings] = (None, settings)
        self._slots: dict[str, tuple[Limit, ...]] = {}
        self._used: dict[str, int] = {}  # limit key → slots held (the sum over _slots)
        self._namespace: dict[str, str] = {}
        # Executions waiting in a queue: uid → (creation order, key, limit keys).
        self._queued: dict[str, tuple[tuple[Any, str, str], str, frozenset[str]]] = {}
        self._blocked_by: dict[str, str] = {}  # uid → the kind of limit it waits for
        self.ready = False
        # Called with the execution whose slots (or place in a queue) just freed.
        self.on_free: Callable[[Execution], None] = lambda ex: None

    @property
    def settings(self) -> LimitSettings:
        if self._source is None:
            return self._base
        data = self._source()
        if data is not self._parsed[0]:
            try:
                self._parsed = (data, LimitSettings.from_data(data))
            except (TypeError, ValueError):
                self._parsed = (data, self._base)  # a mistyped knob: keep the defaults
        return self._parsed[1]

    def keys_of(self, ex: Execution, settings: LimitSettings | None = None) -> tuple[str, ...]:
        """The keys of ``ex``'s limits, in the order they are checked: its namespace, its
        action (when that has a limit), the nodes (an action that takes one out of service)."""
        action = str(ex.spec.get("action", ""))
        return ((f"namespace/{ex.namespace}",)
                + ((f"action/{action}",) if action in (settings or self.settings).per_action
                   else ())
                + (("nodes",) if takes_node(action) else ()))

    def _hold_slots(self, ex: Execution, limits: tuple[Limit, ...]) -> None:
        self.release(ex)
        self._slots[ex.uid] = limits
        self._namespace[ex.uid] = ex.namespace
        for limit in limits:
            self._used[limit.key] = self._used.get(limit.key, 0) + 1

    def limits_of(self, ex: Execution, schedulable_nodes: int) -> tuple[Limit, ...]:
        s = self.settings
        action = str(ex.spec.get("action", ""))
        out = []
        for key in self.keys_of(ex, s):
            if key == "nodes":
                by_fraction = max(1, int(schedulable_nodes * s.node_loss_fraction))
                most = min(s.nodes_at_once, by_fraction)
                why = ("nodes cordoned or draining at once" if most == s.nodes_at_once else
                       f"nodes out of service at once ({s.node_loss_fraction:.0%} of "
                       f"{schedulable_nodes} schedulable)")
                out.append(Limit(key, most, why))
            elif key.startswith("action/"):
                out.append(Limit(key, s.per_action[action], f"active {action} executions"))
            else:
                out.append(Limit(key, s.per_namespace,
                                 f"active executions in namespace {ex.namespace}"))
        return tuple(out)

    # --- the table --------------------------------------------------------------------
    def rebuild(self, executions: Iterable[Execution]) -> None:
        """A new term: the slots are exactly those of the executions past validation."""
        self._slots.clear()
        self._used.clear()
        self._namespace.clear()
        self._queued.clear()
        self._blocked_by.clear()
        for ex in executions:
            if ex.phase in HOLDS_SLOT and not ex.deleting:
                self._hold_slots(ex, self.limits_of(ex, 0))
        self.ready = True

    def holds(self, ex: Execution) -> bool:
        return ex.uid in self._slots

    def admit(self, ex: Execution, others: Iterable[Execution], schedulable_nodes: int, *,
              reserve: bool) -> str | None:
        """None when ``ex`` may go on (and, with ``reserve``, its slots are taken now);
        else the Queued message naming the full limit and the position."""
        if ex.uid in self._slots:
            return None
        wanted = self.limits_of(ex, schedulable_nodes)
        mine = _order(ex)
        # Those ahead in the queues: older (so never ``ex`` itself: its order ends with its
        # uid), waiting, not held for another reason.
        settings = self.settings
        waiting = [self.keys_of(o, settings) for o in others
                   if _order(o) < mine and _waiting(o) and o.uid not in self._slots
                   and o.status.reason not in NOT_NEXT]
        for limit in wanted:
            used = self._used.get(limit.key, 0)
            ahead = sum(1 for keys in waiting if limit.key in keys)
            if used + ahead >= limit.maximum:
                self._queued[ex.uid] = (mine, ex.key, frozenset(w.key for w in wanted))
                self._blocked_by[ex.uid] = limit.key.split("/", 1)[0]
                return (f"limit {limit.describe}: {used} of {limit.maximum} in use; "
                        f"position {ahead + 1} in the queue")
        self._queued.pop(ex.uid, None)
        self._blocked_by.pop(ex.uid, None)
        if reserve:
            self._hold_slots(ex, wanted)
        return None

    def wait(self, ex: Execution, key: str) -> None:
        """``ex`` waits for something keyed ``key`` other than a slot (``brake/<action>``):
        ``behind`` names it when an execution of that kind frees or goes through."""
        self._queued[ex.uid] = (_order(ex), ex.key, frozenset({key}))
        self._blocked_by[ex.uid] = key.split("/", 1)[0]

    def release(self, ex: Execution) -> bool:
        """Give the slots back (idempotent); True when some were held."""
        self._namespace.pop(ex.uid, None)
        held = self._slots.pop(ex.uid, None)
        for limit in held or ():
            if (left := self._used[limit.key] - 1) > 0:
                self._used[limit.key] = left
            else:
                del self._used[limit.key]
        return held is not None

    def ended(self, ex: Execution) -> None:
        """``ex`` ended or went away: free its slots (or its place in a queue) and wake
        those waiting behind it."""
        self.release(ex)
        self._queued.pop(ex.uid, None)
        self._blocked_by.pop(ex.uid, None)
        self.on_free(ex)

    def queued_by_limit(self) -> dict[str, int]:
        """How many executions wait, by the kind of limit they wait for (namespace, action,
        nodes): bounded, for the metrics."""
        counts = dict.fromkeys(("namespace", "action", "nodes"), 0)
        for kind in self._blocked_by.values():
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def active_by_namespace(self, exclude: str) -> dict[str, int]:
        """Executions holding a slot, per namespace (the policy input's activeExecutions)."""
        counts: dict[str, int] = {}
        for uid, namespace in self._namespace.items():
            if uid != exclude:
                counts[namespace] = counts.get(namespace, 0) + 1
        return counts

    def behind(self, freed: Execution, most: int = 10) -> list[str]:
        """The keys of the queued executions a slot freed by ``freed`` may let go on, head
        first (a few: the others keep their place until those ahead have moved)."""
        keys = set(self.keys_of(freed))
        keys.add(f"brake/{freed.spec.get('action', '')}")
        queued = sorted((order, key) for uid, (order, key, wanted) in self._queued.items()
                        if uid != freed.uid and keys & wanted)
        return [key for _, key in queued[:most]]
