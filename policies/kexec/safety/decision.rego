# The decision document every engine is asked for:
#
#   data.kexec.safety.decision = {
#     "allow": bool,               # false iff there is at least one violation
#     "requires_approval": bool,   # true iff there is at least one approval reason
#     "violations": [{"rule": str, "message": str}],   # sorted
#     "approval_reasons": [str],   # sorted; informational
#     "defer": [str],              # sorted; non-empty: an allowed execution waits
#   }
#
# It is a complete document, always defined whatever the input, so an engine
# never has to interpret an undefined rule.
package kexec.safety

decision := {
	"allow": count(violation) == 0,
	"requires_approval": count(approval) > 0,
	"violations": sort([v | some v in violation]),
	"approval_reasons": sort([r | some r in approval]),
	"defer": sort([r | some r in defer]),
}
