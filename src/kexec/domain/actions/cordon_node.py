from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kexec.domain.actions._workload import is_unschedulable, node_summary
from kexec.domain.actions.base import Action, Context, RollbackSpec
from kexec.domain.fields import Fields, Param
from kexec.domain.resources import Change, Check, Mutation, ObjectRef, Patch, Rule, Snapshot

NODE_RULES = (Rule(("",), ("nodes",), ("get", "patch")),)


@dataclass(frozen=True)
class NodeParams:
    node: str


class _SetSchedulable(Action[NodeParams]):
    """cordon (unschedulable=True) and uncordon (False) differ only in the flag."""

    unschedulable: bool
    inverse: str
    node_action = True
    target_kind = "Node"
    effects = ("nodeSchedulability",)
    default_timeout_seconds = 30
    params_doc = (Param("node", "name", "Node name"),)
    rules = NODE_RULES

    def _parse(self, v: Mapping[str, Any], f: Fields) -> NodeParams:
        return NodeParams(v["node"])

    def to_dict(self, p: NodeParams) -> dict[str, Any]:
        return {"node": p.node}

    def target(self, p: NodeParams) -> ObjectRef:
        return ObjectRef("Node", "", p.node)

    def plan(self, p: NodeParams, snap: Snapshot, ctx: Context) -> list[Mutation]:
        return [Patch(self.target(p), "merge", {"spec": {"unschedulable": self.unschedulable}})]

    def postconditions(self, p: NodeParams, snap: Snapshot, result: Mapping[str, Any]) -> list[Check]:
        now = is_unschedulable(snap.get("target"))
        return [Check("Unschedulable" if self.unschedulable else "Schedulable",
                      now == self.unschedulable, f"spec.unschedulable={now}")]

    def rollback(self, p: NodeParams, before: Snapshot, ctx: Context) -> RollbackSpec:
        if is_unschedulable(before.get("target")) == self.unschedulable:
            return RollbackSpec(False, note="node was already in that state; nothing to undo")
        return RollbackSpec(True, self.inverse, {"node": p.node})

    def reconstruct(self, p: NodeParams, before: Mapping[str, Any],
                    now: Snapshot) -> tuple[list[Change], RollbackSpec] | None:
        was = before.get("unschedulable")
        if isinstance(was, bool) and was != self.unschedulable and is_unschedulable(
                now.get("target")) == self.unschedulable:
            return ([Change("Node", "", p.node, self.name, {"unschedulable": was},
                            {"unschedulable": self.unschedulable})],
                    RollbackSpec(True, self.inverse, {"node": p.node},
                                 note="reconstructed: the runner stopped without a report"))
        return None

    def guard(self, p: NodeParams, snap: Snapshot) -> dict[str, str]:
        return {}  # Nodes change constantly (heartbeats); cordoning is idempotent anyway.

    def summarize(self, obj: Any) -> dict[str, Any]:
        return node_summary(obj)


class CordonNode(_SetSchedulable):
    name = "cordon_node"
    key = "cordonNode"
    description = "Mark a Node unschedulable."
    unschedulable = True
    inverse = "uncordon_node"
    destructive = True
    removes_capacity = True
