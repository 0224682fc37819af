# Accessors over the input document (schema: policies/README.md) and the
# classification of the requested execution. The policy knows no action by
# name: it decides on the facts the controller derives from the action
# registry (input.action) and on the normalized change (input.change).
# Missing optional fields read as empty values; missing required fields are
# reported by input_errors, which denies (an absent field must never make a
# deny rule silently undefined).
package kexec.safety

# Parity rule for this whole policy: never negate a call (or `in`) whose
# argument may be undefined. OPA evaluates `not f(x.y)` as undefined when x.y
# is undefined (the argument is evaluated outside the negation), regopy as
# true. Hence the object.get defaults and the always-defined accessors.

# rego-cpp looks a key up by scanning the object's keys (≈ 1 µs per key) and
# re-evaluates a rule that is undefined at every reference (only a defined
# value is memoized). So every sub-document of the input is looked up once,
# here, into an always-defined rule ({} when absent or not an object), the
# boolean helpers have a `default` (false is remembered, undefined is not),
# and the rules test the action's facts before anything costlier.
_execution := x if {
	x := input.execution
	is_object(x)
} else := {}

_target := x if {
	x := input.target
	is_object(x)
} else := {}

_namespace := x if {
	x := input.namespace
	is_object(x)
} else := {}

_cluster := x if {
	x := input.cluster
	is_object(x)
} else := {}

_time := x if {
	x := input.time
	is_object(x)
} else := {}

# The action's facts (input.action) and the normalized change (input.change).
facts := x if {
	x := input.action
	is_object(x)
} else := {}

change := x if {
	x := input.change
	is_object(x)
} else := {}

# The requested action; "" when absent or not a string (input_errors says so).
action := a if {
	a := _execution.action
	is_string(a)
} else := ""

# What the action changes ("replicas", "evictsPods", ...).
changes := c if {
	c := facts.changes
	is_array(c)
} else := []

# A fact holds: a boolean fact of the action is true, or it is one of its changes.
has_fact(f) if facts[f] == true

has_fact(f) if f in changes

_known_action if facts.name == _execution.action

default _node_target := false

_node_target if _target.kind == "Node"

trusted_namespaces := t if {
	t := input.controller.trustedNamespaces
	is_array(t)
} else := []

execution_annotations := x if {
	x := _execution.annotations
	is_object(x)
} else := {}

target_labels := x if {
	x := _target.labels
	is_object(x)
} else := {}

namespace_labels := x if {
	x := _namespace.labels
	is_object(x)
} else := {}

target_object := x if {
	x := _target.object
	is_object(x)
} else := {}

# Labels the change sets on the target (a manifest's).
change_labels := x if {
	x := change.labels
	is_object(x)
} else := {}

# Every namespace the execution touches: the target's and namespace.name (they
# agree in well-formed input; a disagreement must not dodge a rule).
target_namespaces contains ns if {
	ns := _target.namespace
	is_string(ns)
	ns != ""
}

target_namespaces contains ns if {
	ns := _namespace.name
	is_string(ns)
	ns != ""
}

# The node the execution acts on, if its target is a node.
target_node_names contains name if {
	_node_target
	name := _target.name
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

# Replica counts the execution asks for, whatever the action (input.change.replicas).
desired_replicas contains r if {
	r := change.replicas
	r != null
}

# Asking for fewer replicas than now, or for any count when the current one is
# unknown, counts as scaling down.
scale_down if {
	count(desired_replicas) > 0
	not current_replicas
}

scale_down if {
	some r in desired_replicas
	is_number(r)
	r < current_replicas
}

# --- classification -----------------------------------------------------------

default destructive := false

destructive if facts.destructive == true

destructive if scale_down

default production_namespace := false

production_namespace if {
	namespace_labels[config.production_label_key] == config.production_label_value
}

default critical_workload := false

critical_workload if target_labels[config.critical_label_key] == config.critical_label_value

critical_workload if change_labels[config.critical_label_key] == config.critical_label_value

default emergency_override := false

emergency_override if execution_annotations[config.emergency_override_annotation] == "true"

# The change may set container images (a patch that touches them, or one that
# cannot be inspected: input.change.images), or applies a manifest of a
# workload kind, which sets its images.
default image_change := false

image_change if change.images == true

image_change if {
	"manifest" in changes
	_target.kind in config.workload_kinds
}

default sensitive_change := false

sensitive_change if facts.sensitive == true

# --- time -----------------------------------------------------------------------

now_ns := _rfc3339_ns(_time.now) if {
	is_string(_time.now)
	regex.match(_utc_re, _time.now)
}

# Hour windows are half-open [start_hour, end_hour) in UTC on the listed
# weekdays (Monday=0). A window with start_hour > end_hour runs overnight and
# belongs to the weekday it starts on.
# The time fields are well-formed (otherwise input_errors denies).
default valid_time := false

valid_time if {
	_int_between(_time.weekday, 0, 6)
	_int_between(_time.hour, 0, 23)
}

in_window(w) if {
	valid_time
	w.start_hour < w.end_hour
	_time.weekday in w.weekdays
	w.start_hour <= _time.hour
	_time.hour < w.end_hour
}

in_window(w) if {
	valid_time
	w.start_hour > w.end_hour
	_time.weekday in w.weekdays
	_time.hour >= w.start_hour
}

in_window(w) if {
	valid_time
	w.start_hour > w.end_hour
	previous_weekday := (_time.weekday + 6) % 7
	previous_weekday in w.weekdays
	_time.hour < w.end_hour
}

# Absolute windows are half-open [start, end).
in_window(w) if {
	is_string(w.start)
	_rfc3339_ns(w.start) <= now_ns
	now_ns < _rfc3339_ns(w.end)
}

in_business_hours if {
	bh := config.business_hours
	_time.weekday in bh.weekdays
	bh.start_hour <= _time.hour
	_time.hour < bh.end_hour
}

# --- input validation ---------------------------------------------------------------

_utc_re := `^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$`

# One rule body on purpose: evaluated on every decision, it must stay cheap
# (inline comparisons rather than helper functions: rego-cpp pays for every
# call, and for every key it scans when it looks a field up, so each
# sub-document is looked up once into a local). input_errors (below) explains
# a failure; keep the two in step. time.now is checked only where it is used
# (absolute freeze windows).
input_ok if {
	e := _execution
	is_string(e.name)
	is_string(e.namespace)
	is_string(e.action)
	is_object(e.parameters)
	is_object(input.action)
	a := facts
	is_string(a.name)
	is_string(a.targetKind)
	is_boolean(a.clusterScoped)
	is_boolean(a.destructive)
	is_boolean(a.sensitive)
	is_boolean(a.removesCapacity)
	is_boolean(a.restoresCapacity)
	is_array(a.changes)
	c := change
	is_boolean(c.images)
	is_object(c.labels)
	is_array(input.controller.trustedNamespaces)
	t := _target
	is_string(t.kind)
	is_string(t.namespace)
	is_string(t.name)
	is_string(_namespace.name)
	cl := _cluster
	is_object(cl.activeExecutions)
	nodes := cl.nodes
	is_array(nodes)
	tm := _time
	is_string(tm.now)
	wd := tm.weekday
	is_number(wd)
	wd >= 0
	wd <= 6
	wd == floor(wd)
	h := tm.hour
	is_number(h)
	h >= 0
	h <= 23
	h == floor(h)
	m := tm.minute
	is_number(m)
	m >= 0
	m <= 59
	every node in nodes {
		is_string(node.name)
		is_boolean(node.ready)
		is_boolean(node.unschedulable)
		is_boolean(node.controlPlane)
	}
	_replicas_ok
}

_replicas_ok if object.get(change, "replicas", null) == null

_replicas_ok if _int_between(change.replicas, 0, _max_count)

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
	some field, path in {
		"execution.parameters": ["execution", "parameters"],
		"cluster.activeExecutions": ["cluster", "activeExecutions"],
		"action": ["action"],
		"change.labels": ["change", "labels"],
	}
	not is_object(object.get(input, path, null))
	msg := sprintf("input.%s must be an object", [field])
}

_action_facts_ok if {
	is_string(input.action.name)
	is_string(input.action.targetKind)
	is_boolean(input.action.clusterScoped)
	is_boolean(input.action.destructive)
	is_boolean(input.action.sensitive)
	is_boolean(input.action.removesCapacity)
	is_boolean(input.action.restoresCapacity)
	is_array(input.action.changes)
}

input_errors contains "input.action must be {name: string, targetKind: string, clusterScoped, destructive, sensitive, removesCapacity, restoresCapacity: bool, changes: list}" if {
	not _action_facts_ok
}

input_errors contains "input.change.images must be a boolean" if {
	not is_boolean(object.get(input, ["change", "images"], null))
}

input_errors contains "input.controller.trustedNamespaces must be a list" if {
	not is_array(object.get(input, ["controller", "trustedNamespaces"], null))
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

input_errors contains "input.change.replicas must be null or a non-negative integer" if {
	not _replicas_ok
}
