#!/usr/bin/env bash
# Gate the Rego safety policies with the real opa binary:
#   opa fmt --list   (no unformatted files)
#   opa check --strict policies/
#   opa test policies/ -v --timeout 60s
# opa comes from $KEXEC_BIN_DIR/opa; without KEXEC_BIN_DIR, hack/build-binaries.sh
# runs (a no-op when its cache is warm) and the dir on its last stdout line is used.
# regopy (the embedded engine) accepts v0 syntax silently and does no strict
# checks, so this script is the gate for syntax and strictness.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POLICIES="$ROOT/policies"

if [ -z "${KEXEC_BIN_DIR:-}" ]; then
    echo "[policy-check] KEXEC_BIN_DIR not set: running hack/build-binaries.sh" >&2
    KEXEC_BIN_DIR="$("$ROOT/hack/build-binaries.sh" | tail -n 1)"
fi
OPA="$KEXEC_BIN_DIR/opa"
if [ ! -x "$OPA" ]; then
    echo "[policy-check] ERROR: $OPA not found or not executable" >&2
    exit 1
fi
echo "[policy-check] $("$OPA" version | head -n 1) at $OPA" >&2

unformatted="$("$OPA" fmt --list "$POLICIES")"
if [ -n "$unformatted" ]; then
    echo "[policy-check] ERROR: not formatted (run: $OPA fmt -w policies/):" >&2
    echo "$unformatted" >&2
    exit 1
fi

"$OPA" check --strict "$POLICIES"
echo "[policy-check] opa check --strict: ok" >&2

# test_every_fixture evaluates all ~90 fixtures in one test (2-3 s on a quiet
# machine): opa's default 5 s per-test timeout is too tight on a loaded one.
"$OPA" test "$POLICIES" -v --timeout 60s
