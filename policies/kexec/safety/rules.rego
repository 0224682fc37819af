# The safety rules. Each rule adds {"rule", "message"} objects to `violation`
# (any violation denies) or reasons to `approval` (any reason requires
# approval). policies/README.md documents every rule and its knobs.
package kexec.safety

# --- input and configuration sanity (fail closed) ---------------------------------

# input_ok and config_ok are the cheap checks; the detailed messages are only
# computed when they fail. A failure without a message still denies.
violation contains {"rule": "invalid_input", "message": msg} if {
	not input_ok
	some msg in _input_messages
}

violation contains {"rule": "invalid_input", "message": msg} if some msg in now_errors

_input_messages := input_errors if count(input_errors) > 0

else := {"input does not match the documented schema"}

violation contains {"rule": "invalid_config", "message": msg} if {
	not config_ok
	some msg in _config_messages
}

_config_messages := config_errors if count(config_errors) > 0

else := {"data.kexec.config is invalid"}

# input.action carries the facts of the requested action (from the controller's
# action registry); an action without them is unknown.
violation contains {"rule": "unknown_action", "message": msg} if {
	not _known_action
	msg := sprintf("unknown action %s", [printable(action)])
}

# --- namespaces ----------------------------------------------------------------

violation contains {"rule": "protected_namespace", "message": msg} if {
	some ns in target_namespaces
	ns in config.protected_namespaces
	msg := sprintf("namespace %s is protected", [printable(ns)])
}

# The trusted namespaces are the controller's (input.controller.trustedNamespaces).
default _trusted_requester := false

_trusted_requester if _execution.namespace in trusted_namespaces

default _cluster_scoped := false

_cluster_scoped if facts.clusterScoped == true

_cluster_scoped if object.get(_target, "namespace", "") == ""

violation contains {"rule": "namespace_scope", "message": msg} if {
	not _trusted_requester
	_cluster_scoped
	_node_target
	msg := sprintf("node actions may only be requested from a trusted namespace, not %s", [printable(_execution.namespace)])
}

violation contains {"rule": "namespace_scope", "message": msg} if {
	not _trusted_requester
	_cluster_scoped
	not _node_target
	msg := sprintf("cluster-scoped targets may only be changed from a trusted namespace, not %s", [printable(_execution.namespace)])
}

violation contains {"rule": "namespace_scope", "message": msg} if {
	not _trusted_requester
	some ns in target_namespaces
	ns != _execution.namespace
	msg := sprintf("an execution in namespace %s may not act on namespace %s", [printable(_execution.namespace), printable(ns)])
}

violation contains {"rule": "rate_limit", "message": msg} if {
	active := object.get(_cluster, ["activeExecutions", _execution.namespace], 0)
	is_number(active)
	most := config.max_concurrent_per_namespace
	is_number(most)
	active >= most
	msg := sprintf(
		"namespace %s already has %v active executions (max %v)",
		[printable(_execution.namespace), active, most],
	)
}

# --- replicas -------------------------------------------------------------------

violation contains {"rule": "max_replicas", "message": msg} if {
	some r in desired_replicas
	is_number(r)
	most := config.max_replicas
	is_number(most)
	r > most
	msg := sprintf("desired replicas %v exceed the maximum of %v", [r, most])
}

violation contains {"rule": "critical_scale_to_zero", "message": msg} if {
	some r in desired_replicas
	r == 0
	critical_workload
	msg := sprintf("workloads labelled %s=%s may not be scaled to zero", [printable(config.critical_label_key), printable(config.critical_label_value)])
}

violation contains {"rule": "critical_min_replicas", "message": msg} if {
	some r in desired_replicas
	is_number(r)
	r > 0
	critical_workload
	is_number(config.critical_min_replicas)
	r < config.critical_min_replicas
	msg := sprintf(
		"workloads labelled %s=%s need at least %v replicas, not %v",
		[printable(config.critical_label_key), printable(config.critical_label_value), config.critical_min_replicas, r],
	)
}

# --- pods -----------------------------------------------------------------------

_owner_references := refs if {
	refs := target_object.metadata.ownerReferences
	is_array(refs)
} else := []

violation contains {"rule": "bare_pod", "message": msg} if {
	"deletesPod" in changes
	not config.allow_bare_pod_deletion
	count(_owner_references) == 0
	msg := sprintf("pod %s has no owner and would not be recreated", [printable(_target.name)])
}

# --- nodes ----------------------------------------------------------------------

_nodes := ns if {
	ns := _cluster.nodes
	is_array(ns)
} else := []

_control_plane_node if {
	some node in _nodes
	node.name in target_node_names
	node.controlPlane == true
}

_control_plane_node if {
	some label in config.control_plane_labels
	label in object.keys(target_labels)
}

violation contains {"rule": "control_plane_node", "message": msg} if {
	facts.removesCapacity == true
	_control_plane_node
	msg := sprintf("%s of control-plane node %s is not allowed", [action, printable(_target.name)])
}

_counts_toward_capacity(node) if {
	node.ready == true
	node.unschedulable == false
	not _node_name(node) in target_node_names
	not node.controlPlane == true
}

_counts_toward_capacity(node) if {
	node.ready == true
	node.unschedulable == false
	not _node_name(node) in target_node_names
	node.controlPlane == true
	config.count_control_plane_nodes == true
}

# Ready schedulable nodes left once the target node is unschedulable.
schedulable_nodes_after := count([node | some node in _nodes; _counts_toward_capacity(node)])

violation contains {"rule": "min_schedulable_nodes", "message": msg} if {
	facts.removesCapacity == true
	is_number(config.min_ready_schedulable_nodes)
	schedulable_nodes_after < config.min_ready_schedulable_nodes
	msg := sprintf(
		"%s would leave %v ready schedulable nodes (minimum %v)",
		[action, schedulable_nodes_after, config.min_ready_schedulable_nodes],
	)
}

# Another node that is unschedulable (cordoned, possibly being drained) blocks
# a drain: the policy cannot tell a cordon from a drain in progress.
_node_name(node) := n if {
	n := node.name
	is_string(n)
} else := ""

_other_unschedulable_nodes := sort([printable(node.name) |
	some node in _nodes
	node.unschedulable == true
	not _node_name(node) in target_node_names
])

violation contains {"rule": "concurrent_drain", "message": msg} if {
	"evictsPods" in changes
	is_number(config.max_other_unschedulable_nodes_for_drain)
	count(_other_unschedulable_nodes) > config.max_other_unschedulable_nodes_for_drain
	msg := sprintf("other nodes are unschedulable (cordoned or draining): %v", [_other_unschedulable_nodes])
}

# --- manifests ------------------------------------------------------------------

# The kind of an applied manifest is the target's kind ("" when it has none).
_manifest_kind := k if {
	k := _target.kind
	is_string(k)
} else := ""

_manifest_kind_allowed if _manifest_kind in config.manifest_allowed_kinds

violation contains {"rule": "manifest_kind_not_allowed", "message": msg} if {
	"manifest" in changes
	not _manifest_kind_allowed
	msg := sprintf("%s of kind %s is not allowed", [printable(action), printable(_manifest_kind)])
}

# --- time windows -----------------------------------------------------------------

# Actions with one of the freeze_exempt_facts (e.g. restoresCapacity) are exempt.
default _freeze_exempt := false

_freeze_exempt if {
	some f in config.freeze_exempt_facts
	has_fact(f)
}

_time_violation contains {"rule": "change_freeze", "message": msg} if {
	some w in config.freeze_windows
	_valid_window(w)
	in_window(w)
	not _freeze_exempt
	msg := sprintf("change freeze %s is in effect", [_window_name(w)])
}

_time_violation contains {"rule": "outside_business_hours", "message": msg} if {
	bh := config.business_hours
	bh.enabled == true
	_valid_business_hours(bh)
	valid_time
	destructive
	not in_business_hours
	msg := "destructive actions are only allowed during business hours"
}

_window_name(w) := printable(w.name) if is_string(w.name)

else := "(unnamed)"

# The emergency override turns time-window denials into an approval requirement.
violation contains v if {
	some v in _time_violation
	not emergency_override
}

approval contains "emergency_override" if {
	count(_time_violation) > 0
	emergency_override
}

# --- deferral ---------------------------------------------------------------------

# Inside a maintenance window an execution is not denied: it waits (Pending /
# Deferred, the controller asks again later). The freeze_exempt_facts exempt
# here too (putting a node back does not wait); the emergency override turns a
# deferral into an approval requirement, as it does a freeze.
_defer contains msg if {
	some w in config.maintenance_windows
	_valid_window(w)
	in_window(w)
	not _freeze_exempt
	msg := sprintf("maintenance window %s is in effect", [_window_name(w)])
}

defer contains msg if {
	some msg in _defer
	not emergency_override
}

approval contains "emergency_override" if {
	count(_defer) > 0
	emergency_override
}

# --- approval ---------------------------------------------------------------------

approval contains "production_destructive" if {
	destructive
	production_namespace
}

default _sensitive_scope := false

_sensitive_scope if config.sensitive_changes_scope == "all"

_sensitive_scope if {
	config.sensitive_changes_scope == "production"
	production_namespace
}

approval contains "sensitive_change" if {
	sensitive_change
	_sensitive_scope
}

approval contains "image_change" if {
	image_change
	_sensitive_scope
}

approval contains "action_requires_approval" if {
	some f in config.approval_required_facts
	has_fact(f)
}
