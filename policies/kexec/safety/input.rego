# Accessors over the input document (schema: policies/README.md) and the
# classification of the requested action. Missing optional fields read as
# empty values; missing required fields are reported by input_errors, which
# denies (an absent field must never make a deny rule silently undefined).
package kexec.safety

actions := {
	"apply_manifest",
	"cordon_node",
	"delete_pod",
	"drain_node",
	"patch_deployment",
	"rollback_deployment",
	"rollout_restart",
	"scale_deployment",
	"uncordon_node",
	"update_configmap",
	"update_secret",
}

node_actions := {"cordon_node", "drain_node", "uncordon_node"}

# Actions that take a node out of scheduling.
node_removing_actions := {"cordon_node", "drain_node"}

# Parity rule for this whole policy: never negate a call (or `in`) whose
# argument may be undefined. OPA evaluates `not f(x.y)` as undefined when x.y
# is undefined (the argument is evaluated outside the negation), regopy as
# true. Hence the object.get defaults and the always-defined accessors.

# The requested action; "" when absent or not a string (input_errors says so).
action := a if {
	a := input.execution.action
	is_string(a)
} else := ""

# Built with object.get so that a missing field yields {} rather than an
# undefined value (which would make every rule using it undefined).
_object_at(x, path) := v if {
	v := object.get(x, path, {})
	is_object(v)
} else := {}

params := _object_at(input, ["execution", "parameters"])

execution_annotations := _object_at(input, ["execution", "annotations"])

target_labels := _object_at(input, ["target", "labels"])

namespace_labels := _object_at(input, ["namespace", "labels"])

target_object := _object_at(input, ["target", "object"])

manifest := _object_at(params, ["manifest"])

manifest_labels := _object_at(manifest, ["metadata", "labels"])

# Every namespace the execution touches: the target's, the parameters' and the
# manifest's (they should agree; a disagreement must not dodge a rule).
target_namespaces contains ns if {
	some ns in [
		object.get(input, ["target", "namespace"], ""),
		object.get(params, "namespace", ""),
		object.get(manifest, ["metadata", "namespace"], ""),
		object.get(input, ["namespace", "name"], ""),
	]
	is_string(ns)
	ns != ""
}

# The node(s) a node action acts on (target.name and parameters.node agree in
# well-formed input; both are considered).
target_node_names contains name if {
	action in node_actions
	some name in [object.get(input, ["target", "name"], ""), object.get(params, "node", "")]
	is_string(name)
	name != ""
}

# regopy 1.5.2 writes strings into its JSON output without escaping them, and
# a string that reached sprintf from an object.get default or a body-local
# literal keeps its quotes. A message with a quote or backslash would make the
# whole decision unreadable (an engine error for the embedded engine, a deny
# for OPA). So messages only interpolate input through printable(), and only
# values that come straight from input, data or a rule/function head.
printable(s) := s if {
	is_string(s)
	regex.match(`^[A-Za-z0-9 ._:/@+=-]{1,253}$`, s)
} else := "(unprintable)"

# --- replicas -----------------------------------------------------------------

current_replicas := r if {
	r := target_object.spec.replicas
	is_number(r)
}

# Replica counts the execution asks for, whatever the action.
desired_replicas contains r if {
	action == "scale_deployment"
	r := params.replicas
}

desired_replicas contains r if {
	action == "patch_deployment"
	is_object(params.patch)
	r := params.patch.spec.replicas
}

desired_replicas contains r if {
	action == "patch_deployment"
	is_array(params.patch)
	some op in params.patch
	is_object(op)
	object.get(op, "op", "") in {"add", "replace"}
	object.get(op, "path", "") == "/spec/replicas"
	r := op.value
}

desired_replicas contains r if {
	action == "apply_manifest"
	manifest.kind in {"Deployment", "StatefulSet", "ReplicaSet"}
	r := manifest.spec.replicas
}

# Scaling down, or to an unknown current size, counts as scaling down.
scale_down if {
	action == "scale_deployment"
	not current_replicas
}

scale_down if {
	action == "scale_deployment"
	some r in desired_replicas
	is_number(r)
	r < current_replicas
}

# --- classification -----------------------------------------------------------

destructive if action in config.destructive_actions

destructive if scale_down

production_namespace if {
	namespace_labels[config.production_label_key] == config.production_label_value
}

critical_workload if target_labels[config.critical_label_key] == config.critical_label_value

critical_workload if {
	action == "apply_manifest"
	manifest_labels[config.critical_label_key] == config.critical_label_value
}

emergency_override if execution_annotations[config.emergency_override_annotation] == "true"

# JSON-patch paths that may change a container image: the containers lists and
# anything above them.
_image_path(path) if path in {"", "/spec", "/spec/template", "/spec/template/spec"}

_image_path(path) if {
	some prefix in [
		"/spec/template/spec/containers",
		"/spec/template/spec/initContainers",
		"/spec/template/spec/ephemeralContainers",
	]
	startswith(path, prefix)
}

# patch_deployment whose patch may change an image. A patch that cannot be
# inspected (neither object nor array) is assumed to.
image_change if {
	action == "patch_deployment"
	is_object(params.patch)
	walk(params.patch, [path, _])
	count(path) > 0
	path[count(path) - 1] == "image"
}

image_change if {
	action == "patch_deployment"
	is_array(params.patch)
	some op in params.patch
	is_object(op)
	some key in ["path", "from"]
	p := object.get(op, key, null)
	is_string(p)
	_image_path(p)
}

image_change if {
	action == "patch_deployment"
	patch := object.get(params, "patch", null)
	not is_object(patch)
	not is_array(patch)
}

# Applying a workload manifest sets its images.
image_change if {
	action == "apply_manifest"
	manifest.kind in config.workload_kinds
}

sensitive_change if action in {"update_configmap", "update_secret"}

# --- time -----------------------------------------------------------------------

now_ns := _rfc3339_ns(input.time.now) if {
	is_string(input.time.now)
	regex.match(_utc_re, input.time.now)
}

# Hour windows are half-open [start_hour, end_hour) in UTC on the listed
# weekdays (Monday=0). A window with start_hour > end_hour runs overnight and
# belongs to the weekday it starts on.
# The time fields are well-formed (otherwise input_errors denies).
valid_time if {
	_int_between(input.time.weekday, 0, 6)
	_int_between(input.time.hour, 0, 23)
}

in_window(w) if {
	valid_time
	w.start_hour < w.end_hour
	input.time.weekday in w.weekdays
	w.start_hour <= input.time.hour
	input.time.hour < w.end_hour
}

in_window(w) if {
	valid_time
	w.start_hour > w.end_hour
	input.time.weekday in w.weekdays
	input.time.hour >= w.start_hour
}

in_window(w) if {
	valid_time
	w.start_hour > w.end_hour
	previous_weekday := (input.time.weekday + 6) % 7
	previous_weekday in w.weekdays
	input.time.hour < w.end_hour
}

# Absolute windows are half-open [start, end).
in_window(w) if {
	is_string(w.start)
	_rfc3339_ns(w.start) <= now_ns
	now_ns < _rfc3339_ns(w.end)
}

in_business_hours if {
	bh := config.business_hours
	input.time.weekday in bh.weekdays
	bh.start_hour <= input.time.hour
	input.time.hour < bh.end_hour
}

# --- input validation ---------------------------------------------------------------

_utc_re := `^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$`

# One rule body on purpose: evaluated on every decision, it must stay cheap
# (inline comparisons rather than helper functions: rego-cpp pays for every
# call). input_errors (below) explains a failure; keep the two in step.
# time.now is checked only where it is used (absolute freeze windows).
input_ok if {
	is_string(input.execution.name)
	is_string(input.execution.namespace)
	is_string(input.execution.action)
	is_object(input.execution.parameters)
	is_string(input.target.kind)
	is_string(input.target.namespace)
	is_string(input.target.name)
	is_string(input.namespace.name)
	is_object(input.cluster.activeExecutions)
	is_array(input.cluster.nodes)
	is_string(input.time.now)
	input.time.weekday in {0, 1, 2, 3, 4, 5, 6}
	is_number(input.time.hour)
	input.time.hour >= 0
	input.time.hour <= 23
	input.time.hour == floor(input.time.hour)
	is_number(input.time.minute)
	input.time.minute >= 0
	input.time.minute <= 59
	every node in input.cluster.nodes {
		is_string(node.name)
		is_boolean(node.ready)
		is_boolean(node.unschedulable)
		is_boolean(node.controlPlane)
	}
	_action_parameters_ok
}

_action_parameters_ok if not action in {"scale_deployment", "apply_manifest"}

_action_parameters_ok if {
	action == "scale_deployment"
	_int_between(params.replicas, 0, _max_count)
}

_action_parameters_ok if {
	action == "apply_manifest"
	is_string(manifest.kind)
}

_valid_node(node) if {
	is_string(node.name)
	is_boolean(node.ready)
	is_boolean(node.unschedulable)
	is_boolean(node.controlPlane)
}

# time.now is needed only to match absolute freeze windows.
_has_absolute_window if {
	some w in config.freeze_windows
	is_string(w.start)
}

now_errors contains "input.time.now must be an RFC 3339 UTC timestamp (suffix Z)" if {
	_has_absolute_window
	not now_ns
}

# (Field names are spelled out rather than built with concat: regopy 1.5.2
# renders a concat result passed straight to sprintf with quotes.)
_required_strings := {
	"execution.name": ["execution", "name"],
	"execution.namespace": ["execution", "namespace"],
	"execution.action": ["execution", "action"],
	"target.kind": ["target", "kind"],
	"target.namespace": ["target", "namespace"],
	"target.name": ["target", "name"],
	"namespace.name": ["namespace", "name"],
	"time.now": ["time", "now"],
}

input_errors contains msg if {
	some field, path in _required_strings
	not is_string(object.get(input, path, null))
	msg := sprintf("input.%s must be a string", [field])
}

input_errors contains msg if {
	some field, path in {"execution.parameters": ["execution", "parameters"], "cluster.activeExecutions": ["cluster", "activeExecutions"]}
	not is_object(object.get(input, path, null))
	msg := sprintf("input.%s must be an object", [field])
}

input_errors contains msg if {
	not is_array(object.get(input, ["cluster", "nodes"], null))
	msg := "input.cluster.nodes must be a list"
}

input_errors contains msg if {
	some field, hi in {"weekday": 6, "hour": 23, "minute": 59}
	not _int_between(object.get(input, ["time", field], null), 0, hi)
	msg := sprintf("input.time.%s must be an integer between 0 and %d", [field, hi])
}

input_errors contains msg if {
	is_array(input.cluster.nodes)
	some node in input.cluster.nodes
	not _valid_node(node)
	msg := "input.cluster.nodes entries must be {name: string, ready: bool, unschedulable: bool, controlPlane: bool}"
}

input_errors contains msg if {
	action == "scale_deployment"
	not _int_between(object.get(params, "replicas", null), 0, _max_count)
	msg := "parameters.replicas must be a non-negative integer"
}

input_errors contains msg if {
	action == "apply_manifest"
	not is_string(object.get(manifest, "kind", null))
	msg := "parameters.manifest must be an object with a kind"
}
