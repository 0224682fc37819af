# Table-driven tests over the shared fixtures in policies/testdata/ (the same
# inputs the Python parity test feeds to both engines). A fixture is
#   {"base": <name in bases.json>, "input": <deep-merged over the base>,
#    "config": <optional overrides of data.kexec.config>,
#    "expect": {"allow", "requires_approval", "violations": [rule names], "approval_reasons"}}
package kexec.safety_test

import data.kexec.safety

_case_input(c) := object.union(data.testdata.bases[c.base], c.input)

_case_config(c) := object.union(data.kexec.config, object.get(c, "config", {}))

_decide(c) := d if {
	d := safety.decision with input as _case_input(c) with data.kexec.config as _case_config(c)
}

_passes(name) if {
	c := data.testdata.cases[name]
	d := _decide(c)
	d.allow == c.expect.allow
	d.requires_approval == c.expect.requires_approval
	sort({v.rule | some v in d.violations}) == c.expect.violations
	d.approval_reasons == c.expect.approval_reasons
	d.defer == object.get(c.expect, "defer", [])
}

# A named fixture test; prints the decision (shown by opa test on failure, or with -v).
_check(name) if {
	print("case", name, "decision", _decide(data.testdata.cases[name]))
	_passes(name)
}

# Every fixture, including ones without a named test below.
test_every_fixture if {
	count(data.testdata.cases) > 0
	every name, _ in data.testdata.cases {
		_passes(name)
	}
}

# The decision is a complete document even for an empty input (and it denies).
test_empty_input_denied if {
	d := safety.decision with input as {}
	d.allow == false
	"invalid_input" in {v.rule | some v in d.violations}
}

test_violation_has_rule_and_message if {
	d := _decide(data.testdata.cases.protected_namespace_deny)
	every v in d.violations {
		is_string(v.rule)
		is_string(v.message)
		v.message != ""
	}
}

# policies/data.json is a complete, valid configuration.
test_data_json_is_valid if {
	safety.config_ok
	count(safety.config_errors) == 0
}

# Without data.kexec.config every execution is denied, with explanations.
test_missing_config_denied if {
	c := data.testdata.cases.protected_namespace_allow
	d := safety.decision with input as _case_input(c) with data.kexec.config as {}
	d.allow == false
	sort({v.rule | some v in d.violations}) == ["invalid_config"]
	"missing configuration key max_replicas" in {v.message | some v in d.violations}
}

_bad_configs := [
	{"max_replicas": -1},
	{"max_replicas": 1.5},
	{"sensitive_changes_scope": "everywhere"},
	{"business_hours": "9-5"},
	{"business_hours": {"extra": 1}},
	{"business_hours": {"enabled": true, "weekdays": [7], "start_hour": 8, "end_hour": 18}},
	{"business_hours": {"enabled": true, "weekdays": [1], "start_hour": 18, "end_hour": 8}},
	{"freeze_windows": [{"start": "2025-06-12T00:00:00Z", "end": "2025-06-11T00:00:00Z"}]},
	{"freeze_windows": [{"start": "tomorrow", "end": "2025-06-11T00:00:00Z"}]},
	{"freeze_windows": [{"weekdays": [1], "start_hour": 3, "end_hour": 3}]},
	{"freeze_windows": [{"weekdays": [1], "start_hour": 3, "end_hour": 4, "extra": 1}]},
	{"freeze_windows": ["weekends"]},
	{"maintenance_windows": [{"weekdays": [1], "start_hour": 3, "end_hour": 3}]},
	{"maintenance_windows": "sundays"},
	{"emergency_override_annotation": ""},
	{"allow_bare_pod_deletion": "yes"},
	{"unknown_knob": 1},
]

# The load-time gate (config_errors) rejects every bad configuration.
test_bad_configs_rejected if {
	every override in _bad_configs {
		cfg := object.union(data.kexec.config, override)
		count(safety.config_errors) > 0 with data.kexec.config as cfg
	}
}

# The per-decision check catches missing and unknown knobs.
test_incomplete_config_denied if {
	c := data.testdata.cases.protected_namespace_allow
	cfg := object.remove(data.kexec.config, ["max_replicas"])
	d := safety.decision with input as _case_input(c) with data.kexec.config as cfg
	d.violations == [{"rule": "invalid_config", "message": "missing configuration key max_replicas"}]
}

test_list_of_strings_checked_at_load if {
	cfg := object.union(data.kexec.config, {"protected_namespaces": [1]})
	safety.config_errors == {"configuration key protected_namespaces must be a list of strings"} with data.kexec.config as cfg
}

test_valid_windows_accepted if {
	cfg := object.union(data.kexec.config, {"freeze_windows": [
		{"name": "n", "weekdays": [5, 6], "start_hour": 0, "end_hour": 24},
		{"weekdays": [4], "start_hour": 22, "end_hour": 6},
		{"start": "2025-12-24T00:00:00+01:00", "end": "2025-12-27T00:00:00.5Z"},
	]})
	count(safety.config_errors) == 0 with data.kexec.config as cfg
}

# A malformed input is denied with explanations, and input_ok agrees.
test_malformed_node_denied if {
	c := data.testdata.cases.worker_drain_allow
	inp := json.patch(_case_input(c), [{"op": "add", "path": "/cluster/nodes/0/ready", "value": "yes"}])
	not safety.input_ok with input as inp
	d := safety.decision with input as inp
	d.allow == false
	sort({v.rule | some v in d.violations}) == ["invalid_input"]
}

test_config_not_an_object_denied if {
	c := data.testdata.cases.protected_namespace_allow
	d := safety.decision with input as _case_input(c) with data.kexec.config as "oops"
	d.allow == false
}

# --- facts, not names ---------------------------------------------------------------------

_rules(d) := sort({v.rule | some v in d.violations})

# An action the policy has never heard of is decided on its facts: renamed, a
# fixture's action gets the same decision.
test_a_new_action_is_decided_on_its_facts if {
	every name in ["control_plane_cordon_deny", "concurrent_drain_deny", "bare_pod_deny", "max_replicas_deny", "production_secret_approval"] {
		c := data.testdata.cases[name]
		inp := json.patch(_case_input(c), [
			{"op": "replace", "path": "/execution/action", "value": "brand_new_action"},
			{"op": "replace", "path": "/action/name", "value": "brand_new_action"},
		])
		d := safety.decision with input as inp with data.kexec.config as _case_config(c)
		_rules(d) == c.expect.violations
		d.approval_reasons == c.expect.approval_reasons
	}
}

test_freeze_exemption_is_a_fact if {
	c := data.testdata.cases.change_freeze_exempt_uncordon_allow
	inp := json.patch(_case_input(c), [{"op": "replace", "path": "/action/restoresCapacity", "value": false}])
	_rules(safety.decision) == ["change_freeze"] with input as inp with data.kexec.config as _case_config(c)
}

test_approval_required_for_a_fact if {
	c := data.testdata.cases.non_production_destructive_no_approval
	cfg := object.union(data.kexec.config, {"approval_required_facts": ["destructive"]})
	d := safety.decision with input as _case_input(c) with data.kexec.config as cfg
	d.approval_reasons == ["action_requires_approval"]
}

# The trusted namespaces are the controller's, from the input.
test_trusted_namespaces_come_from_the_input if {
	c := data.testdata.cases.namespace_scope_node_action_untrusted_deny
	inp := json.patch(_case_input(c), [{"op": "add", "path": "/controller/trustedNamespaces/-", "value": "shop"}])
	d := safety.decision with input as inp
	d.allow == true
}

test_missing_facts_are_an_unknown_action if {
	c := data.testdata.cases.protected_namespace_allow
	inp := json.patch(_case_input(c), [{"op": "remove", "path": "/action"}])
	_rules(safety.decision) == ["invalid_input", "unknown_action"] with input as inp
}

# --- per-fixture tests (one per fixture, named after it) ---------------------------------

# approval

test_production_destructive_approval if _check("production_destructive_approval")

test_production_scale_up_no_approval if _check("production_scale_up_no_approval")

test_production_scale_down_approval if _check("production_scale_down_approval")

test_scale_down_unknown_current_approval if _check("scale_down_unknown_current_approval")

test_non_production_destructive_no_approval if _check("non_production_destructive_no_approval")

test_production_label_configured_approval if _check("production_label_configured_approval")

test_production_configmap_approval if _check("production_configmap_approval")

test_production_secret_approval if _check("production_secret_approval")

test_configmap_non_production_no_approval if _check("configmap_non_production_no_approval")

test_sensitive_scope_all_approval if _check("sensitive_scope_all_approval")

test_image_change_patch_approval if _check("image_change_patch_approval")

test_image_change_json_patch_approval if _check("image_change_json_patch_approval")

test_patch_without_image_no_approval if _check("patch_without_image_no_approval")

test_image_change_manifest_workload_approval if _check("image_change_manifest_workload_approval")

test_approval_required_actions_approval if _check("approval_required_actions_approval")

test_uncordon_never_destructive_no_approval if _check("uncordon_never_destructive_no_approval")

# manifest

test_manifest_kind_allowed_allow if _check("manifest_kind_allowed_allow")

test_manifest_kind_not_allowed_deny if _check("manifest_kind_not_allowed_deny")

test_manifest_kind_configured_allow if _check("manifest_kind_configured_allow")

# namespaces

test_protected_namespace_allow if _check("protected_namespace_allow")

test_protected_namespace_deny if _check("protected_namespace_deny")

test_protected_namespace_execution_in_kubernaut_system_allow if _check("protected_namespace_execution_in_kubernaut_system_allow")

test_protected_namespace_kubernaut_system_target_deny if _check("protected_namespace_kubernaut_system_target_deny")

test_protected_namespace_manifest_namespace_deny if _check("protected_namespace_manifest_namespace_deny")

test_protected_namespace_configured_allow if _check("protected_namespace_configured_allow")

test_namespace_scope_cross_namespace_deny if _check("namespace_scope_cross_namespace_deny")

test_namespace_scope_node_action_untrusted_deny if _check("namespace_scope_node_action_untrusted_deny")

test_namespace_scope_node_action_trusted_allow if _check("namespace_scope_node_action_trusted_allow")

# nodes

test_control_plane_cordon_deny if _check("control_plane_cordon_deny")

test_control_plane_drain_label_deny if _check("control_plane_drain_label_deny")

test_control_plane_uncordon_allow if _check("control_plane_uncordon_allow")

test_worker_drain_allow if _check("worker_drain_allow")

test_min_schedulable_nodes_deny if _check("min_schedulable_nodes_deny")

test_min_schedulable_nodes_control_plane_not_counted_deny if _check("min_schedulable_nodes_control_plane_not_counted_deny")

test_min_schedulable_nodes_count_control_plane_allow if _check("min_schedulable_nodes_count_control_plane_allow")

test_min_schedulable_nodes_configured_deny if _check("min_schedulable_nodes_configured_deny")

test_min_schedulable_nodes_uncordon_allow if _check("min_schedulable_nodes_uncordon_allow")

test_concurrent_drain_deny if _check("concurrent_drain_deny")

test_concurrent_drain_target_already_cordoned_allow if _check("concurrent_drain_target_already_cordoned_allow")

test_concurrent_drain_cordon_allow if _check("concurrent_drain_cordon_allow")

test_concurrent_drain_configured_allow if _check("concurrent_drain_configured_allow")

# pods

test_bare_pod_owned_allow if _check("bare_pod_owned_allow")

test_bare_pod_deny if _check("bare_pod_deny")

test_bare_pod_configured_allow if _check("bare_pod_configured_allow")

# rate_limit

test_rate_limit_below_max_allow if _check("rate_limit_below_max_allow")

test_rate_limit_at_max_deny if _check("rate_limit_at_max_deny")

test_rate_limit_uses_execution_namespace_allow if _check("rate_limit_uses_execution_namespace_allow")

test_rate_limit_configured_deny if _check("rate_limit_configured_deny")

# replicas

test_max_replicas_at_limit_allow if _check("max_replicas_at_limit_allow")

test_max_replicas_deny if _check("max_replicas_deny")

test_max_replicas_patch_deny if _check("max_replicas_patch_deny")

test_max_replicas_json_patch_deny if _check("max_replicas_json_patch_deny")

test_max_replicas_configured_allow if _check("max_replicas_configured_allow")

test_critical_scale_to_zero_deny if _check("critical_scale_to_zero_deny")

test_scale_to_zero_not_critical_allow if _check("scale_to_zero_not_critical_allow")

test_critical_min_replicas_deny if _check("critical_min_replicas_deny")

test_critical_min_replicas_allow if _check("critical_min_replicas_allow")

test_critical_label_configured_deny if _check("critical_label_configured_deny")

test_critical_label_other_value_allow if _check("critical_label_other_value_allow")

test_critical_manifest_scale_to_zero_deny if _check("critical_manifest_scale_to_zero_deny")

# sanity

test_unknown_action_deny if _check("unknown_action_deny")

test_invalid_input_missing_time_deny if _check("invalid_input_missing_time_deny")

test_invalid_input_bad_now_deny if _check("invalid_input_bad_now_deny")

test_invalid_input_bad_now_unused_allow if _check("invalid_input_bad_now_unused_allow")

test_invalid_input_replicas_string_deny if _check("invalid_input_replicas_string_deny")

test_invalid_config_unknown_key_deny if _check("invalid_config_unknown_key_deny")

test_invalid_config_bad_window_ignored_allow if _check("invalid_config_bad_window_ignored_allow")

test_invalid_config_wrong_type_ignored_allow if _check("invalid_config_wrong_type_ignored_allow")

test_valid_every_action_allow if _check("valid_every_action_allow")

test_rollback_deployment_allow if _check("rollback_deployment_allow")

test_dry_run_is_evaluated_like_a_real_run_deny if _check("dry_run_is_evaluated_like_a_real_run_deny")

# time

test_change_freeze_weekly_deny if _check("change_freeze_weekly_deny")

test_change_freeze_weekly_outside_allow if _check("change_freeze_weekly_outside_allow")

test_change_freeze_overnight_deny if _check("change_freeze_overnight_deny")

test_change_freeze_overnight_outside_allow if _check("change_freeze_overnight_outside_allow")

test_change_freeze_absolute_deny if _check("change_freeze_absolute_deny")

test_change_freeze_absolute_outside_allow if _check("change_freeze_absolute_outside_allow")

test_change_freeze_exempt_uncordon_allow if _check("change_freeze_exempt_uncordon_allow")

test_change_freeze_override_approval if _check("change_freeze_override_approval")

test_change_freeze_override_not_true_deny if _check("change_freeze_override_not_true_deny")

test_override_without_freeze_no_approval if _check("override_without_freeze_no_approval")

test_override_does_not_bypass_other_rules_deny if _check("override_does_not_bypass_other_rules_deny")

test_business_hours_inside_allow if _check("business_hours_inside_allow")

test_business_hours_outside_deny if _check("business_hours_outside_deny")

test_business_hours_evening_deny if _check("business_hours_evening_deny")

test_business_hours_non_destructive_allow if _check("business_hours_non_destructive_allow")

test_business_hours_override_approval if _check("business_hours_override_approval")

test_override_annotation_configured_approval if _check("override_annotation_configured_approval")

# A maintenance window defers (never denies) and names itself; outside it nothing waits.
test_maintenance_window_defers if {
	d := _decide(data.testdata.cases.maintenance_window_defer)
	d.allow == true
	d.defer == ["maintenance window db-upgrade is in effect"]
	d.violations == []
}
