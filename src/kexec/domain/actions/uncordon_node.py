from __future__ import annotations

from kexec.domain.actions.cordon_node import _SetSchedulable


class UncordonNode(_SetSchedulable):
    name = "uncordon_node"
    key = "uncordonNode"
    description = "Mark a Node schedulable again."
    unschedulable = False
    inverse = "cordon_node"
    restores_capacity = True
