# Configuration of the safety policy: data.kexec.config (policies/data.json,
# or the data.json key of the safety-policies ConfigMap). Every knob is
# required; there are no defaults hidden in Rego, policies/data.json is the one
# place that states them.
#
# Validation has two levels, because the embedded engine (rego-cpp) pays for
# every expression on every decision (a full check costs ~1 ms there):
#   - config_ok, on every decision, is structural only: data.kexec.config is
#     an object with exactly the 22 knobs (a missing or partial data document
#     denies every execution: violation invalid_config).
#   - config_errors, the full check (types, ranges, lists of strings, freeze
#     windows, business hours), is the gate when a policy set is loaded: the
#     embedded engine (EmbeddedPolicy, ReloadablePolicy) refuses a set with
#     errors; for an OPA server, CI runs `opa test` on policies/ and
#     OpaHttpPolicy.config_errors() can be checked at start-up. It is also
#     reported in the decision whenever config_ok fails.
# Rules guard their comparisons (is_number, _valid_window, ...) so that a
# mistyped knob that slipped past the gate can never raise an error.
package kexec.safety

config := data.kexec.config

_config_types := {
	"protected_namespaces": "array",
	"max_replicas": "number",
	"critical_label_key": "string",
	"critical_label_value": "string",
	"critical_min_replicas": "number",
	"min_ready_schedulable_nodes": "number",
	"count_control_plane_nodes": "boolean",
	"control_plane_labels": "array",
	"max_other_unschedulable_nodes_for_drain": "number",
	"production_label_key": "string",
	"production_label_value": "string",
	"sensitive_changes_scope": "string",
	"approval_required_facts": "array",
	"workload_kinds": "array",
	"freeze_windows": "array",
	"maintenance_windows": "array",
	"freeze_exempt_facts": "array",
	"business_hours": "object",
	"manifest_allowed_kinds": "array",
	"max_concurrent_per_namespace": "number",
	"emergency_override_annotation": "string",
	"allow_bare_pod_deletion": "boolean",
}

_max_count := 1000000

config_ok if {
	is_object(config)
	count(config) == 22
}

# --- validation -------------------------------------------------------------

_rfc3339_re := `^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$`

_int_between(x, lo, hi) if {
	is_number(x)
	x == floor(x)
	lo <= x
	x <= hi
}

_string_list(xs) if {
	is_array(xs)
	every x in xs {
		is_string(x)
	}
}

_weekday_list(xs) if {
	is_array(xs)
	every x in xs {
		_int_between(x, 0, 6)
	}
}

_config_or_null := c if {
	c := data.kexec.config
} else := null

config_errors contains msg if {
	not is_object(_config_or_null)
	msg := "data.kexec.config must be an object"
}

config_errors contains msg if {
	is_object(config)
	some key, _ in _config_types
	not key in object.keys(config)
	msg := sprintf("missing configuration key %s", [key])
}

config_errors contains msg if {
	is_object(config)
	some key, _ in config
	not key in object.keys(_config_types)
	msg := sprintf("unknown configuration key %s", [printable(key)])
}

config_errors contains msg if {
	is_object(config)
	some key, value in config
	expected := _config_types[key]
	type_name(value) != expected
	msg := sprintf("configuration key %s must be of type %s, not %s", [key, expected, type_name(value)])
}

_list_keys := {
	"protected_namespaces", "control_plane_labels", "approval_required_facts",
	"workload_kinds", "freeze_exempt_facts", "manifest_allowed_kinds",
}

config_errors contains msg if {
	is_object(config)
	some key in _list_keys
	is_array(config[key])
	not _string_list(config[key])
	msg := sprintf("configuration key %s must be a list of strings", [key])
}

_count_keys := {
	"max_replicas", "critical_min_replicas", "min_ready_schedulable_nodes",
	"max_other_unschedulable_nodes_for_drain", "max_concurrent_per_namespace",
}

config_errors contains msg if {
	is_object(config)
	some key in _count_keys
	is_number(config[key])
	not _int_between(config[key], 0, _max_count)
	msg := sprintf("configuration key %s must be a non-negative integer", [key])
}

config_errors contains msg if {
	is_string(config.sensitive_changes_scope)
	not config.sensitive_changes_scope in {"production", "all"}
	msg := "configuration key sensitive_changes_scope must be \"production\" or \"all\""
}

config_errors contains msg if {
	is_object(config)
	some key in ["critical_label_key", "production_label_key", "emergency_override_annotation"]
	config[key] == ""
	msg := sprintf("configuration key %s must not be empty", [key])
}

config_errors contains msg if {
	is_object(config.business_hours)
	not _valid_business_hours(config.business_hours)
	msg := "business_hours must be {enabled: bool, weekdays: [0-6], start_hour: 0-23, end_hour: 1-24, start_hour < end_hour}"
}

_valid_business_hours(bh) if {
	is_object(bh)
	count(bh) == 4
	is_boolean(bh.enabled)
	_weekday_list(bh.weekdays)
	_int_between(bh.start_hour, 0, 23)
	_int_between(bh.end_hour, 1, 24)
	bh.start_hour < bh.end_hour
}

config_errors contains msg if {
	is_array(config.freeze_windows)
	some i, w in config.freeze_windows
	not _valid_window(w)
	msg := sprintf("freeze_windows[%d] must be {name?, weekdays: [0-6], start_hour: 0-23, end_hour: 0-24} (start_hour != end_hour) or {name?, start: RFC3339, end: RFC3339} (start < end)", [i])
}

config_errors contains msg if {
	is_array(config.maintenance_windows)
	some i, w in config.maintenance_windows
	not _valid_window(w)
	msg := sprintf("maintenance_windows[%d] must be a window like those of freeze_windows", [i])
}

_valid_window_name(w) if not "name" in object.keys(w)

_valid_window_name(w) if is_string(w.name)

_valid_window(w) if {
	is_object(w)
	_valid_window_name(w)
	every key, _ in w {
		key in {"name", "weekdays", "start_hour", "end_hour"}
	}
	_weekday_list(w.weekdays)
	_int_between(w.start_hour, 0, 23)
	_int_between(w.end_hour, 0, 24)
	w.start_hour != w.end_hour
}

_valid_window(w) if {
	is_object(w)
	_valid_window_name(w)
	every key, _ in w {
		key in {"name", "start", "end"}
	}
	is_string(w.start)
	is_string(w.end)
	regex.match(_rfc3339_re, w.start)
	regex.match(_rfc3339_re, w.end)
	_rfc3339_ns(w.start) < _rfc3339_ns(w.end)
}

# time.parse_rfc3339_ns of regopy 1.5.2 does not accept the "Z" suffix (it
# returns undefined); "+00:00" means the same and both engines accept it.
_rfc3339_ns(s) := time.parse_rfc3339_ns(concat("", [trim_suffix(s, "Z"), "+00:00"])) if {
	endswith(s, "Z")
} else := time.parse_rfc3339_ns(s)
