"""`kexec runner`: runs inside the Job pod, as the action's ServiceAccount.

Reads its orders from the environment the controller wrote into the Job,
performs the action (RunAction), writes a JSON report (≤ 4 KiB, redacted) to
the termination-message path and exits 0 (done), 1 (retryable) or 2
(permanent: the Job's podFailurePolicy stops retrying).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Any

from kexec.adapters.clock import SystemClock
from kexec.adapters.kubernetes.api import KubernetesApi
from kexec.adapters.kubernetes.client import api_client
from kexec.application.run_action import (
    EXIT_PERMANENT,
    RunAction,
    RunReport,
    SpecMismatch,
    request_from_env,
)

MAX_MESSAGE = 4096
log = logging.getLogger("kexec.runner")


def fit(report: dict[str, Any]) -> str:
    """The report as JSON within the 4 KiB termination-message cap, dropping detail first."""
    text = json.dumps(report, separators=(",", ":"), sort_keys=True)
    for key in ("changes", "after", "before"):
        if len(text.encode()) <= MAX_MESSAGE:
            break
        report = {**report, key: "truncated"}
        text = json.dumps(report, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > MAX_MESSAGE:
        rollback = report.get("rollback") or {}
        report = {**report, "rollback": {"available": False,
                                         "note": "rollback data exceeded 4 KiB",
                                         "action": rollback.get("action", "")}}
        text = json.dumps(report, separators=(",", ":"), sort_keys=True)
    return text[:MAX_MESSAGE]


async def run(env: dict[str, str]) -> RunReport:
    try:
        req = request_from_env(env)
    except SpecMismatch as exc:
        return RunReport(False, reason="SpecChanged", message=str(exc))
    except KeyError as exc:
        return RunReport(False, reason="InvalidRunnerEnvironment",
                         message=f"missing environment variable {exc.args[0]}")
    except ValueError as exc:
        return RunReport(False, reason="InvalidRunnerEnvironment", message=str(exc))
    async for api in api_client(pool_size=4):
        cluster = KubernetesApi(api, request_timeout=15.0)
        return await RunAction(cluster, SystemClock())(req)
    raise RuntimeError("no API client")  # pragma: no cover


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    env = dict(os.environ)
    report = asyncio.run(run(env))
    text = fit(report.to_dict())
    path = env.get("KEXEC_TERMINATION_LOG", "/dev/termination-log")
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        log.error("cannot write termination message to %s: %s", path, exc)
    # Redacted, so safe for the pod log too.
    print(text, file=sys.stdout)
    code = report.exit_code
    return code if code in (0, 1, EXIT_PERMANENT) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
