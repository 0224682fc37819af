#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries (initdb, pg_ctl, postgres) are installed and
# print their directory, e.g. /usr/lib/postgresql/15/bin. Installs Debian's `postgresql`
# package when they are missing (needs root or sudo). Idempotent; the tests start their
# own throw-away server from these binaries (devstack/postgres.py), so the cluster
# and service the package may create are neither needed nor used.
#
#   hack/ensure-postgres.sh            # prints the bin dir on stdout, progress on stderr
#   PG_BINDIR=$(hack/ensure-postgres.sh)
set -euo pipefail

find_bindir() {
  local d
  if [[ -n "${KEXEC_PG_BINDIR:-}" && -x "${KEXEC_PG_BINDIR}/initdb" && -x "${KEXEC_PG_BINDIR}/pg_ctl" ]]; then
    echo "$KEXEC_PG_BINDIR"; return 0
  fi
  # newest major version first
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5 -n -r); do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
      echo "$d"; return 0
    fi
  done
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}

if bindir=$(find_bindir); then
  echo "$bindir"
  exit 0
fi

echo "ensure-postgres: initdb/pg_ctl not found; installing Debian package 'postgresql'" >&2
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "ensure-postgres: not root and no sudo: install 'postgresql' yourself" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# Do not let the package start a system service (there may be no init system).
policy_rc=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy_rc ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy_rc" >/dev/null
  $SUDO chmod +x "$policy_rc"
  created_policy=1
fi
cleanup() { if [[ $created_policy -eq 1 ]]; then $SUDO rm -f "$policy_rc"; fi; }
trap cleanup EXIT

$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq --no-install-recommends postgresql >&2

if bindir=$(find_bindir); then
  echo "$bindir"
  exit 0
fi
echo "ensure-postgres: installed 'postgresql' but still cannot find initdb/pg_ctl" >&2
exit 1
