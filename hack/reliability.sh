#!/usr/bin/env bash
# The reliability and security suite (docs/reliability.md) on the real local control plane.
#   hack/reliability.sh          the short variant (the sizes CI runs inside hack/test.sh)
#   hack/reliability.sh --long   the long variant (>= 200 executions under 10 SIGKILLs, 10,000 fuzzed specs, ...)
# Extra arguments go to pytest (e.g. -k crash). Prints the table (scenario, tried, survived,
# lost, duplicated, seconds) and writes it to bench/results/reliability-latest.json.
set -euo pipefail
cd "$(dirname "$0")/.."
variant=short
if [ "${1:-}" = "--long" ]; then variant=long; shift; fi
bash hack/setup-venv.sh >/dev/null 2>&1 || bash hack/setup-venv.sh
KEXEC_BIN_DIR="$(bash hack/build-binaries.sh | tail -n 1)"
export KEXEC_BIN_DIR
bash hack/ensure-postgres.sh >/dev/null
export KEXEC_RELIABILITY="$variant" KEXEC_RELIABILITY_JSON="$PWD/bench/results/reliability-latest.json"
exec .venv/bin/python -m pytest -p no:cacheprovider -p no:logging -q tests/reliability "$@"
