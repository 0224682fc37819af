"""Storm brake and cooldown (DESIGN.md "limits, storms and partial failure").

**Storm brake.** More than N executions of one action starting, or N failures of one
action, within a window trip that action's brake: new executions of it wait in
``Pending`` / ``StormBrake`` (a Warning Event, a condition, the gauge
``kexec_storm_brake_engaged``) until the window has passed or an operator releases it
(``kexec brake release ACTION``). Nothing of the brake lives only in the leader: it is
counted from the executions themselves (when each one left ``Pending``, when each run
failed), plus, for the executions this leader let through a moment ago whose status the
cache does not show yet, an in-process table, so a burst cannot overtake the count. A
release is the key ``ACTION`` of the ConfigMap ``kexec-storm-brake`` in the controller's
namespace (``{"releasedAt": ..., "releasedBy": ...}``, written by the CLI): only what
started after it counts. The controller records each release it sees in the audit
trail (a record of its own, ``brake-release:<action>:<time>``).

The waiting executions start in creation order: only the head of an action's queue looks
again on a short timer (``storm_recheck_seconds``, or the moment the window frees a
place); when it goes through it wakes those behind it (``Limits.wait``/``behind``).

**Cooldown.** A target Completed by an action waits ``cooldown`` seconds (per action)
before the same action acts on it again: ``Pending`` / ``Cooldown`` until then (a
rollback, ``spec.rollbackOf``, does not wait).

Dry runs change nothing: they are neither braked nor counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kexec.application.limits import STORM_BRAKE, LimitSettings
from kexec.application.ports.audit import AuditPort, ExecutionRecord, TransitionRecord
from kexec.application.ports.cluster import RunnerCluster
from kexec.application.ports.metrics import Metrics
from kexec.domain.execution import Execution, iso, parse_time
from kexec.domain.naming import BRAKE_CONFIGMAP
from kexec.domain.phases import Phase
from kexec.domain.resources import Get, ObjectRef, Patch
from kexec.domain.safety import target_of

log = logging.getLogger("kexec.application.brake")

RELEASE_CACHE_SECONDS = 2.0  # many waiting executions: one ConfigMap read per this long
_FAILED = frozenset({Phase.FAILED, Phase.ROLLBACK_READY})


@dataclass(frozen=True)
class Release:
    action: str
    at: datetime
    by: str

    @property
    def audit_uid(self) -> str:
        return f"brake-release:{self.action}:{iso(self.at)}"


@dataclass(frozen=True)
class Wait:
    """Why an execution waits, and when it should look again."""

    reason: str
    message: str
    requeue_seconds: float


def _action(ex: Execution) -> str:
    return str(ex.spec.get("action", ""))


def _counts(ex: Execution, action: str) -> bool:
    return _action(ex) == action and not ex.spec.get("dryRun") and not ex.deleting


def parse_releases(configmap: Any) -> dict[str, Release]:
    """The releases a ``kexec-storm-brake`` ConfigMap holds (malformed keys ignored)."""
    data = (configmap or {}).get("data") if isinstance(configmap, Mapping) else None
    out: dict[str, Release] = {}
    for action, raw in (data or {}).items():
        try:
            doc = json.loads(raw)
        except (TypeError, ValueError):
            continue
        at = parse_time(doc.get("releasedAt")) if isinstance(doc, dict) else None
        if at is not None:
            out[str(action)] = Release(str(action), at, str(doc.get("releasedBy", "")))
    return out


class StormBrake:
    def __init__(self, settings: Callable[[], LimitSettings], metrics: Metrics) -> None:
        self._settings = settings
        self.metrics = metrics
        # Executions this process let through: uid → (action, when). The cluster shows the
        # same once the cache has their status; this covers the moment before.
        self._started: dict[str, tuple[str, datetime]] = {}
        self._engaged: set[str] = set()
        self._releases: tuple[datetime, dict[str, Release]] | None = None
        self._recorded: set[str] = set()

    # --- the rules ----------------------------------------------------------------------
    def enabled(self, action: str) -> bool:
        return any(self._settings().storm_limits(action))

    def _start_time(self, o: Execution) -> datetime | None:
        mine = self._started.get(o.uid)
        if mine is not None:
            return mine[1]
        if o.phase in (None, Phase.PENDING):
            return None  # not started (held, queued)
        return o.status.entered(Phase.VALIDATING) or o.created

    @staticmethod
    def _failure_time(o: Execution) -> datetime | None:
        """A run of the action that failed (a Job ran): rejected validations do not count."""
        run = o.status.job_run
        if o.phase not in _FAILED or run is None or not run.job_name:
            return None
        assert o.phase is not None
        return o.status.entered(o.phase) or run.completion_time

    def check(self, ex: Execution, others: Iterable[Execution], now: datetime,
              release: Release | None) -> Wait | None:
        """None when ``ex`` may start; else why it waits for its action's brake."""
        action = _action(ex)
        if ex.spec.get("dryRun") or not self.enabled(action):
            return None
        s = self._settings()
        most, trip = s.storm_limits(action)
        window = timedelta(seconds=s.storm_window_seconds)
        since = now - window
        if release is not None and release.at > since:
            since = release.at
        self._forget_older(now - window)
        started: list[datetime] = []
        failed: list[datetime] = []
        ahead = 0
        for o in others:
            if o.uid == ex.uid or not _counts(o, action):
                continue
            t = self._start_time(o)
            if t is not None and t > since:
                started.append(t)
            elif (t is None and o.status.reason == STORM_BRAKE
                  and (o.created, o.name, o.uid) < (ex.created, ex.name, ex.uid)):
                ahead += 1
            f = self._failure_time(o)
            if f is not None and f > since:
                failed.append(f)
        started.sort()
        failed.sort()
        why: list[str] = []
        clears = now
        if most and len(started) + ahead >= most:
            why.append(f"{len(started)} executions started in the last "
                       f"{s.storm_window_seconds:.0f}s (at most {most})")
            # A place frees when the oldest start leaves the window.
            clears = max(clears, (started[0] if started else now) + window)
        if trip and len(failed) >= trip:
            why.append(f"{len(failed)} failed in the last {s.storm_window_seconds:.0f}s "
                       f"({trip} trip the brake)")
            clears = max(clears, failed[len(failed) - trip] + window)
        if not why:
            if action in self._engaged:
                self._engaged.discard(action)
                self.metrics.storm_brake(action, False)
            return None
        if action not in self._engaged:
            self._engaged.add(action)
            self.metrics.storm_brake(action, True)
        until = (clears - now).total_seconds()
        head = ahead == 0
        message = (f"storm brake on {action}: {'; '.join(why)}; waits until {iso(clears)} "
                   f"or `kexec brake release {action}`; position {ahead + 1}")
        # The head looks again soon (a release, the window); the others are woken by the
        # one ahead of them going through, with a slower safety net.
        recheck = (max(0.5, min(s.storm_recheck_seconds, until + 0.5)) if head else
                   max(s.recheck_seconds, s.storm_recheck_seconds))
        return Wait(STORM_BRAKE, message, recheck)

    def started(self, ex: Execution, now: datetime) -> None:
        """``ex`` goes through (call in the same step as ``check``, without awaiting)."""
        action = _action(ex)
        if not ex.spec.get("dryRun") and self.enabled(action):
            self._started[ex.uid] = (action, now)

    def forget(self, ex: Execution) -> None:
        """``ex`` did not start after all (deferred by the policy)."""
        self._started.pop(ex.uid, None)

    def _forget_older(self, before: datetime) -> None:
        for uid in [u for u, (_, t) in self._started.items() if t <= before]:
            del self._started[uid]

    def cooldown(self, ex: Execution, others: Iterable[Execution], now: datetime) -> Wait | None:
        """Its target was Completed by the same action less than the cooldown ago."""
        action = _action(ex)
        seconds = self._settings().cooldown(action)
        target = target_of(ex)
        if seconds <= 0 or ex.spec.get("dryRun") or ex.spec.get("rollbackOf") or target is None:
            return None
        last: tuple[datetime, Execution] | None = None
        for o in others:
            if o.uid == ex.uid or o.phase is not Phase.COMPLETED or not _counts(o, action):
                continue
            done = o.status.entered(Phase.COMPLETED)
            if done is None or (last is not None and done <= last[0]):
                continue
            theirs = target_of(o)
            if theirs is not None and theirs.key == target.key:
                last = (done, o)
        if last is None:
            return None
        until = last[0] + timedelta(seconds=seconds)
        if until <= now:
            return None
        return Wait("Cooldown", f"{target} was remediated by {last[1].key} ({action}) at "
                    f"{iso(last[0])}; cooldown of {seconds:.0f}s: waits until {iso(until)}",
                    (until - now).total_seconds() + 0.5)

    # --- releases -------------------------------------------------------------------------
    def cached_releases(self, now: datetime) -> dict[str, Release] | None:
        if self._releases is None or (now - self._releases[0]).total_seconds() > \
                RELEASE_CACHE_SECONDS:
            return None
        return self._releases[1]

    def remember_releases(self, now: datetime, releases: dict[str, Release]) -> None:
        self._releases = (now, releases)

    def unrecorded(self, release: Release) -> bool:
        return release.audit_uid not in self._recorded

    def recorded(self, release: Release) -> None:
        self._recorded.add(release.audit_uid)


async def read_releases(cluster: RunnerCluster, namespace: str) -> dict[str, Release]:
    """The operator's releases (as the controller: it may read its own ConfigMaps)."""
    cm = await cluster.read(Get("brake", ObjectRef("ConfigMap", namespace, BRAKE_CONFIGMAP)))
    return parse_releases(cm)


async def record_release(audit: AuditPort, release: Release, namespace: str,
                         controller: str) -> None:
    """One audit record per release (idempotent: keyed by action and time)."""
    message = f"storm brake on {release.action} released by {release.by or 'unknown'}"
    record = ExecutionRecord(
        execution_uid=release.audit_uid, name=f"brake-release-{release.action}",
        namespace=namespace, action=release.action, parameters={}, target_namespace="",
        target_kind="", target_name="", phase="BrakeReleased", reason="StormBrakeReleased",
        message=message, created_at=release.at, success=True, completed_at=release.at,
        extra={"releasedBy": release.by})
    await audit.record(record, [TransitionRecord(
        execution_uid=release.audit_uid, seq=0, time=release.at, from_phase="",
        to_phase="BrakeReleased", reason="StormBrakeReleased", message=message,
        controller=controller)])


class ReleaseBrake:
    """``kexec brake release ACTION``: as the caller, who needs patch on the ConfigMap
    ``kexec-storm-brake`` (Role ``kexec-brake-releaser``)."""

    def __init__(self, cluster: RunnerCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    async def __call__(self, action: str, by: str, now: datetime) -> Release:
        ref = ObjectRef("ConfigMap", self.namespace, BRAKE_CONFIGMAP)
        value = json.dumps({"releasedAt": iso(now), "releasedBy": by}, sort_keys=True)
        await self.cluster.mutate(Patch(ref, "merge", {"data": {action: value}}))
        return Release(action, parse_time(iso(now)) or now, by)
