from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kexec.domain.actions._workload import controller_of, is_unschedulable, node_summary
from kexec.domain.actions.base import Action, Context, RollbackSpec
from kexec.domain.fields import Fields, Param
from kexec.domain.resources import (
    Change,
    Check,
    Evict,
    Get,
    List,
    Mutation,
    ObjectRef,
    Patch,
    Read,
    Rule,
    Snapshot,
    dig,
    meta,
)

MIRROR = "kubernetes.io/config.mirror"
RUNNER_LABEL, RUNNER_VALUE = "app.kubernetes.io/managed-by", "kexec"


@dataclass(frozen=True)
class DrainParams:
    node: str
    grace_period_seconds: int | None
    ignore_daemon_sets: bool
    delete_empty_dir_data: bool
    force: bool
    uncordon_on_failure: bool = True


MAX_POD_CHANGES = 10  # the report is a 4 KiB termination message
BLOCKED_SHOWN = 10


def _finished(pod: dict[str, Any]) -> bool:
    return dig(pod, "status", "phase") in ("Succeeded", "Failed")


def _terminating(snap: Snapshot) -> set[str]:
    """Namespaces being deleted: NamespaceLifecycle refuses evictions (they create
    pods/eviction) in them, and the namespace controller deletes their pods itself."""
    return {str(meta(n).get("name")) for n in snap.get("terminating") or []}


class DrainNode(Action[DrainParams]):
    """`kubectl drain` semantics: cordon, then evict through the Eviction API."""

    name = "drain_node"
    key = "drainNode"
    target_kind = "Node"
    effects = ("nodeSchedulability", "evictsPods")
    destructive = True
    removes_capacity = True
    description = "Cordon a Node and evict its pods through the Eviction API (PDBs honoured)."
    default_timeout_seconds = 900
    node_action = True
    wait_in_runner = True
    params_doc = (
        Param("node", "name", "Node name"),
        Param("gracePeriodSeconds", "integer", "pod termination grace period", required=False,
              minimum=0, maximum=3600),
        Param("ignoreDaemonSets", "boolean", "skip DaemonSet pods", required=False, default=True),
        Param("deleteEmptyDirData", "boolean", "evict pods with emptyDir data", required=False,
              default=False),
        Param("force", "boolean", "also evict pods without a controller", required=False,
              default=False),
        Param("uncordonOnFailure", "boolean",
              "uncordon the node again when the drain cannot finish (recorded as a change)",
              required=False, default=True),
    )
    rules = (
        Rule(("",), ("nodes",), ("get", "patch")),
        Rule(("",), ("pods",), ("get", "list")),
        Rule(("",), ("pods/eviction",), ("create",)),
        # Which namespaces are being deleted (their pods are waited for, not evicted).
        Rule(("",), ("namespaces",), ("list",)),
        # Drain progress: which PodDisruptionBudget blocks which pod.
        Rule(("policy",), ("poddisruptionbudgets",), ("get", "list")),
    )

    def _parse(self, v: Mapping[str, Any], f: Fields) -> DrainParams:
        return DrainParams(v["node"], v["gracePeriodSeconds"], v["ignoreDaemonSets"],
                           v["deleteEmptyDirData"], v["force"], v["uncordonOnFailure"])

    def to_dict(self, p: DrainParams) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node": p.node,
            "ignoreDaemonSets": p.ignore_daemon_sets,
            "deleteEmptyDirData": p.delete_empty_dir_data,
            "force": p.force,
        }
        if p.grace_period_seconds is not None:
            out["gracePeriodSeconds"] = p.grace_period_seconds
        if not p.uncordon_on_failure:
            out["uncordonOnFailure"] = False
        return out

    def target(self, p: DrainParams) -> ObjectRef:
        return ObjectRef("Node", "", p.node)

    def reads(self, p: DrainParams) -> tuple[Read, ...]:
        return (
            Get("target", self.target(p)),
            List("pods", "Pod", field_selector=f"spec.nodeName={p.node}"),
            List("terminating", "Namespace", field_selector="status.phase=Terminating"),
        )

    def classify(self, p: DrainParams, snap: Snapshot) -> tuple[list[dict[str, Any]], list[str]]:
        """Split the node's pods into (to drain, blocking problems), as kubectl drain does.
        Not drained: mirror pods, pods already being deleted, kexec's own Job pods and
        (ignoreDaemonSets) DaemonSet pods. A pod of a namespace being deleted is drained but
        not evicted (see :meth:`evictable`), so it is no problem for lacking a controller or
        having emptyDir data: the namespace deletion removes it whatever the drain does."""
        drain: list[dict[str, Any]] = []
        problems: list[str] = []
        terminating = _terminating(snap)
        for pod in snap.get("pods") or []:
            m = meta(pod)
            if MIRROR in (m.get("annotations") or {}) or m.get("deletionTimestamp"):
                continue
            if (m.get("labels") or {}).get(RUNNER_LABEL) == RUNNER_VALUE:
                continue  # kexec's own Job pods finish on their own (and may be this drain)
            ident = f"{m.get('namespace')}/{m.get('name')}"
            owner = controller_of(pod)
            if owner and owner.get("kind") == "DaemonSet":
                if not p.ignore_daemon_sets:
                    problems.append(f"{ident} is managed by a DaemonSet (set ignoreDaemonSets)")
                continue
            if m.get("namespace") in terminating:
                drain.append(pod)
                continue
            if owner is None and not _finished(pod) and not p.force:
                problems.append(f"{ident} has no controller (set force to evict it)")
                continue
            volumes = dig(pod, "spec", "volumes", default=[]) or []
            if any("emptyDir" in v for v in volumes if isinstance(v, dict)) and not (
                p.delete_empty_dir_data or _finished(pod)
            ):
                problems.append(f"{ident} uses emptyDir data (set deleteEmptyDirData)")
                continue
            drain.append(pod)
        return drain, problems

    def preconditions(self, p: DrainParams, snap: Snapshot) -> list[Check]:
        checks = [self._exists(snap)]
        _, problems = self.classify(p, snap)
        checks.append(Check("PodsEvictable", not problems, "; ".join(problems[:10])))
        return checks

    def evictable(self, p: DrainParams, snap: Snapshot) -> list[dict[str, Any]]:
        """The pods to evict: those to drain but of a namespace being deleted. Like kubectl
        drain (whose eviction there is refused with NamespaceTerminating and retried until
        the pod is marked deleted), such a pod is left to the namespace controller and
        waited for: it counts as left (postconditions) until it is being deleted."""
        drain, _ = self.classify(p, snap)
        terminating = _terminating(snap)
        return [pod for pod in drain if meta(pod).get("namespace") not in terminating]

    def plan(self, p: DrainParams, snap: Snapshot, ctx: Context) -> list[Mutation]:
        out: list[Mutation] = [Patch(self.target(p), "merge", {"spec": {"unschedulable": True}})]
        for pod in self.evictable(p, snap):
            m = meta(pod)
            out.append(Evict(ObjectRef("Pod", m["namespace"], m["name"]), p.grace_period_seconds))
        return out

    def postconditions(self, p: DrainParams, snap: Snapshot, result: Mapping[str, Any]) -> list[Check]:
        left, _ = self.classify(p, snap)
        names = ", ".join(f"{meta(x).get('namespace')}/{meta(x).get('name')}" for x in left[:10])
        return [
            Check("Unschedulable", is_unschedulable(snap.get("target")), ""),
            Check("NoEvictablePodsLeft", not left, f"still running: {names}" if left else ""),
        ]

    def rollback(self, p: DrainParams, before: Snapshot, ctx: Context) -> RollbackSpec:
        if is_unschedulable(before.get("target")):
            return RollbackSpec(False, note="node was already cordoned; evictions cannot be undone")
        return RollbackSpec(True, "uncordon_node", {"node": p.node})

    def guard(self, p: DrainParams, snap: Snapshot) -> dict[str, str]:
        return {}  # Nodes change constantly (heartbeats); a retry re-reads the pods.

    def summarize(self, obj: Any) -> dict[str, Any]:
        return node_summary(obj)

    # --- the whole truth ----------------------------------------------------------------
    def _uncordon(self, p: DrainParams) -> Patch:
        return Patch(self.target(p), "merge", {"spec": {"unschedulable": False}})

    def _cordoned_by_us(self, before: Snapshot) -> bool:
        return before.get("target") is not None and not is_unschedulable(before.get("target"))

    def changes(self, p: DrainParams, before: Snapshot, after: Snapshot) -> list[Change]:
        out: list[Change] = []
        if self._cordoned_by_us(before):
            out.append(Change("Node", "", p.node, "cordon", {"unschedulable": False},
                              {"unschedulable": True}))
        out.extend(self._evictions(p, before, after))
        return out

    def _evictions(self, p: DrainParams, before: Snapshot, after: Snapshot) -> list[Change]:
        planned = self.evictable(p, before)
        present = {(meta(x).get("namespace"), meta(x).get("name")): x
                   for x in after.get("pods") or []}
        gone: list[tuple[str, str]] = []
        for pod in planned:
            key = (meta(pod).get("namespace"), meta(pod).get("name"))
            now = present.get(key)
            if now is None or meta(now).get("uid") != meta(pod).get("uid") or meta(now).get(
                    "deletionTimestamp"):
                gone.append((str(key[0]), str(key[1])))
        out = [Change("Pod", ns, name, "evict") for ns, name in gone[:MAX_POD_CHANGES]]
        if len(gone) > MAX_POD_CHANGES:
            out.append(Change("Pod", "", "", "evict",
                              after={"moreEvicted": len(gone) - MAX_POD_CHANGES}))
        return out

    def compensate(self, p: DrainParams, before: Snapshot) -> list[Mutation]:
        if p.uncordon_on_failure and self._cordoned_by_us(before):
            return [self._uncordon(p)]
        return []

    def failure_changes(self, p: DrainParams, before: Snapshot, after: Snapshot,
                        compensated: bool) -> list[Change]:
        out: list[Change] = []
        if self._cordoned_by_us(before):
            out.append(Change("Node", "", p.node, "cordon", {"unschedulable": False},
                              {"unschedulable": True}))
        out.extend(self._evictions(p, before, after))
        if compensated:
            out.append(Change("Node", "", p.node, "uncordon", {"unschedulable": True},
                              {"unschedulable": False}))
        return out

    def failure_rollback(self, p: DrainParams, before: Snapshot, ctx: Context,
                         compensated: bool) -> RollbackSpec:
        if compensated:
            return RollbackSpec(False, note="the drain could not finish and uncordoned the "
                                            "node again (uncordonOnFailure); evictions cannot "
                                            "be undone")
        return self.rollback(p, before, ctx)

    def reconstruct(self, p: DrainParams, before: Mapping[str, Any],
                    now: Snapshot) -> tuple[list[Change], RollbackSpec] | None:
        if before.get("unschedulable") is False and is_unschedulable(now.get("target")):
            return ([Change("Node", "", p.node, "cordon", {"unschedulable": False},
                            {"unschedulable": True})],
                    RollbackSpec(True, "uncordon_node", {"node": p.node},
                                 note="reconstructed: the runner stopped without a report; "
                                      "evicted pods cannot be brought back"))
        return None

    # --- progress -----------------------------------------------------------------------
    def progress_reads(self, p: DrainParams) -> tuple[Read, ...]:
        return (*self.reads(p), List("pdbs", "PodDisruptionBudget"))

    def progress(self, p: DrainParams, snap: Snapshot) -> dict[str, Any] | None:
        """Pods left to drain, and for each blocked one the PodDisruptionBudget blocking it."""
        left, _ = self.classify(p, snap)
        terminating = _terminating(snap)
        pdbs = [b for b in snap.get("pdbs") or []
                if (dig(b, "status", "disruptionsAllowed", default=0) or 0) <= 0]
        blocked: list[dict[str, str]] = []
        for pod in left:
            m = meta(pod)
            if m.get("namespace") in terminating:
                continue  # not evicted: waited for
            for pdb in pdbs:
                if meta(pdb).get("namespace") == m.get("namespace") and selects(
                        dig(pdb, "spec", "selector"), m.get("labels") or {}):
                    blocked.append({"pod": f"{m.get('namespace')}/{m.get('name')}",
                                    "podDisruptionBudget":
                                        f"{meta(pdb).get('namespace')}/{meta(pdb).get('name')}"})
                    break
        return {"podsLeft": len(left), "blocked": blocked[:BLOCKED_SHOWN]}


def selects(selector: Any, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions) applied to ``labels``. An empty
    selector of a PodDisruptionBudget selects every pod of its namespace (policy/v1)."""
    if not isinstance(selector, dict):
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op = expr.get("key", ""), expr.get("operator", "")
        values = expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True
