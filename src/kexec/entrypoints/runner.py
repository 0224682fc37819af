"""`kexec runner`: runs inside the Job pod, as the action's ServiceAccount.

Reads its orders from the environment the controller wrote into the Job,
performs the action (RunAction), writes a JSON report (≤ 4 KiB, redacted) to
the termination-message path and exits 0 (done), 1 (retryable) or 2
(permanent: the Job's podFailurePolicy stops retrying).

It must start light (DESIGN.md §4: ≤ 0.15 s CPU, ≤ 40 MB per action): it imports the
domain, ``RunAction`` and the standard-library transport only — no CLI, no controller, no
kubernetes-asyncio. Started as ``kexec runner`` (``entrypoints/launch.py`` dispatches it
before loading the CLI), ``kexec-runner`` or ``python -m kexec.entrypoints.runner``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from kexec.adapters.clock import SystemClock
from kexec.adapters.kubernetes.stdlib_client import StdlibApi, endpoint_from_env
from kexec.application.run_action import (
    EXIT_PERMANENT,
    RunAction,
    RunReport,
    SpecMismatch,
    request_from_env,
)

MAX_MESSAGE = 4096
log = logging.getLogger("kexec.runner")
T = TypeVar("T")


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


async def blocking_sleep(seconds: float) -> None:
    time.sleep(seconds)  # noqa: ASYNC251 - the runner has no event loop (run_to_completion)


def run_to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that never suspends, without an event loop.

    The runner's I/O blocks (``StdlibApi``) and so does its sleep (``blocking_sleep``): one
    task, nothing to interleave, so ``RunAction`` completes in a single step and the runner
    does not pay for asyncio. A coroutine that does suspend is a bug, reported as such.
    """
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("the runner's coroutine suspended: it must not wait on an event loop")


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
    cluster = StdlibApi(endpoint_from_env(env), request_timeout=15.0)
    try:
        return await RunAction(cluster, SystemClock(), blocking_sleep)(req)
    finally:
        cluster.close()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    env = dict(os.environ)
    report = run_to_completion(run(env))
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
