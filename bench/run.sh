#!/usr/bin/env bash
# One command, one table (DESIGN.md §4): starts the control plane, simulator, PostgreSQL,
# OPA and the controller (each bench starts what it needs), runs every measure beside a
# baseline (the same change made directly: server dry run + patch through the same
# client) and writes bench/results/latest.json plus a dated markdown table.
#
#   bash bench/run.sh            # full: latency 60, 1,000 real + 1,000 dryRun at once
#   bash bench/run.sh --quick    # small n: the bench cannot rot (latest-quick.json)
# KEXEC_BENCH_OUT=DIR writes the results there instead of bench/results (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=""
latency=60 burst=1000 dry=1000 repeat=7 decisions=2000
if [[ "${1:-}" == "--quick" ]]; then
  quick="--quick" latency=5 burst=10 dry=20 repeat=2 decisions=200
fi
export KEXEC_BIN_DIR="${KEXEC_BIN_DIR:-$(bash hack/build-binaries.sh | tail -n 1)}"
py=.venv/bin/python
run="$(mktemp -d -t kexec-bench-XXXXXX)"
trap 'rm -rf "$run"' EXIT
$py bench/runner_cost.py --repeat "$repeat" --json > "$run/runner.json"
$py bench/policy_latency.py --decisions "$decisions" --plain-query-decisions 20 \
    --opa "$KEXEC_BIN_DIR/opa" --json-out "$run/policy.json" > "$run/policy.md"
$py bench/controller_bench.py --latency "$latency" --burst "$burst" --dry-burst "$dry" \
    --json-out "$run/controller.json" > "$run/controller.md"
$py bench/summarize.py "$run" $quick --out "${KEXEC_BENCH_OUT:-bench/results}"
