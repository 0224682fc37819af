"""The ``kexec`` command: ``kexec runner`` (every Job pod) starts without loading the CLI.

The CLI imports click, rich, yaml, the controller and kubernetes-asyncio (≈ 0.6 s CPU,
≈ 90 MB); the runner needs none of it (``entrypoints/runner.py``). Everything else loads
only the part of kubernetes-asyncio kexec uses (``adapters/kubernetes/client_only.py``:
the controller starts with ≈ 32 MB and 0.4 s less).
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["runner"]:
        from kexec.entrypoints.runner import main as runner_main

        sys.exit(runner_main())
    if sys.argv[1:2] == ["controller"]:
        prepare_controller()  # first: before client_only's imports load libstdc++
    from kexec.adapters.kubernetes.client_only import install

    install()
    from kexec.entrypoints.cli import main as cli_main

    cli_main()


def prepare_controller() -> None:
    """Load rego-cpp before anything loads libstdc++ (aiohttp's extensions do): loaded
    after it, every embedded decision leaks (kexec.adapters.policy.embedded)."""
    import kexec.adapters.policy.embedded  # noqa: F401
